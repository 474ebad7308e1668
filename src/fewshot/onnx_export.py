"""ONNX export of a fitted classifier (:meth:`fewshot.classifier.Classifier.export_onnx`, ``fewshot export --onnx``).

* **Images**: input ``images`` — prepared as the classifier's ``config.json`` ``preprocessing`` says (decoded,
  resized, inverted if so, scaled to [0, 1]) — output ``probabilities [batch, classes]``. The batch axis is dynamic
  where the predictor traces so, else fixed at 1 (a predictor that loops over its queries: MAML, Reptile, ANIL).
* **Text** (all-MiniLM-L6-v2 classifiers: a text model with ``export_tokenizer()`` that takes
  :class:`~fewshot.data.inputs.Tokens`): inputs ``input_ids`` and ``attention_mask`` (``int64 [batch, tokens]``,
  both axes dynamic), output ``probabilities``. The tokenizer travels in the file: metadata ``fewshot_tokenizer`` is a
  Hugging Face ``tokenizers`` JSON with the model's truncation and padding switched on, so
  ``Tokenizer.from_str(meta["fewshot_tokenizer"]).encode_batch(texts)`` gives both inputs.

Before anything is written, onnxruntime's answers are checked against PyTorch's (<= 1e-4): images on ``example``
(default: random images); text on ``example`` sentences (default :data:`CHECK_SENTENCES`) all in one padded batch
and each alone, against :meth:`Classifier.predict_proba` on the strings. Every file also carries the class names
(``fewshot_classes``), the preprocessing and the method in its metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fewshot.classify import require_images
from fewshot.data.inputs import Tokens
from fewshot.errors import FewShotError
from fewshot.io import atomic_write
from fewshot.methods.base import Adapted

if TYPE_CHECKING:
    from fewshot.classifier import Classifier

TOLERANCE = 1e-4
"""Largest difference allowed between onnxruntime's and PyTorch's probabilities."""
CHECK_SENTENCES = (
    "hi",
    "what is my checking account balance",
    "please book a table for four people at the italian place downtown tomorrow at seven in the evening",
    "how do i reset my pin",
)
"""Default text check: 1 to 18 words, so padding and masking are exercised."""


@dataclass
class _Graph:
    """What to trace (``module`` on ``trace``), how its inputs and outputs are named, and feeds to check it on."""

    module: nn.Module
    trace: tuple[torch.Tensor, ...]
    inputs: list[str]
    dynamic: dict[str, dict[int, str]] | None
    checks: list[tuple[dict[str, np.ndarray], torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)


def export_onnx(classifier: Classifier, path: str | Path, example: Any = None) -> dict[str, Any]:
    """Write ``classifier`` to ``path`` as ONNX after checking onnxruntime against PyTorch; returns what was written
    and checked (``path``, ``dynamic_batch``, ``max_difference``, ``checked_inputs``)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise FewShotError("ONNX export needs the onnx and onnxruntime packages (pip install 'fewshot[onnx]')"
                           ) from exc
    path = Path(path)
    method = classifier.method
    grads = [p.requires_grad for p in method.parameters()]
    method.requires_grad_(False)  # traced weights are constants
    failure = ""
    try:
        if classifier.modality == "images":
            graphs = [_image_graph(classifier, example, dynamic) for dynamic in (True, False)]
        else:
            graphs = [_text_graph(classifier, example)]
        for graph in graphs:
            handle, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent if path.parent.exists() else None)
            os.close(handle)
            try:
                with torch.no_grad(), _quiet():
                    torch.onnx.export(graph.module, graph.trace, tmp, dynamo=False, input_names=graph.inputs,
                                      output_names=["probabilities"], opset_version=17, dynamic_axes=graph.dynamic)
                options = onnxruntime.SessionOptions()
                options.log_severity_level = 4  # a failed check is reported in one line below, not logged
                session = onnxruntime.InferenceSession(tmp, options, providers=["CPUExecutionProvider"])
                difference = 0.0
                for feed, ours in graph.checks:
                    theirs = torch.from_numpy(session.run(None, feed)[0])
                    if theirs.shape != ours.shape:
                        raise FewShotError(f"onnxruntime gave shape {tuple(theirs.shape)}, PyTorch "
                                           f"{tuple(ours.shape)}")
                    difference = max(difference, float((theirs - ours).abs().max()))
                if difference <= TOLERANCE:
                    model = onnx.load(tmp)
                    metadata = {"fewshot_classes": json.dumps(classifier.classes),
                                "fewshot_preprocessing": json.dumps(classifier.info["preprocessing"]),
                                "fewshot_method": classifier.info["method"], **graph.metadata}
                    for key, value in metadata.items():
                        entry = model.metadata_props.add()
                        entry.key, entry.value = key, value
                    atomic_write(path, model.SerializeToString())
                    return {"path": str(path), "dynamic_batch": graph.dynamic is not None,
                            "max_difference": difference,
                            "checked_inputs": sum(len(next(iter(feed.values()))) for feed, _ in graph.checks)}
                failure = f"onnxruntime differs from PyTorch by {difference:.2g}"
            except Exception as exc:  # noqa: BLE001 - the exporter and onnxruntime raise many kinds
                failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            finally:
                Path(tmp).unlink(missing_ok=True)
    finally:
        for p, g in zip(method.parameters(), grads, strict=True):
            p.requires_grad_(g)
    raise FewShotError(f"this {classifier.info['method']} classifier could not be exported to ONNX ({failure})")


# --- images --------------------------------------------------------------------------------------------------------


class _ImageProbabilities(nn.Module):
    def __init__(self, predictor: Adapted) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.predictor(images).float(), dim=-1)


def _image_graph(classifier: Classifier, example: torch.Tensor | None, dynamic: bool) -> _Graph:
    spec = require_images(classifier.image_input, classifier.config)
    shape = (spec.size, spec.size) if spec.squeeze else (spec.channels, spec.size, spec.size)
    if example is None:
        example = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    if not isinstance(example, torch.Tensor):
        raise FewShotError("an image classifier's export example is a tensor of prepared images")
    example = example.float().cpu()
    module = _ImageProbabilities(classifier.predictor).eval()
    check = example if dynamic else example[:1]
    with torch.no_grad():
        ours = module(check)
    return _Graph(module, (example[:2] if dynamic else example[:1],), ["images"],
                  {"images": {0: "batch"}, "probabilities": {0: "batch"}} if dynamic else None,
                  [({"images": check.numpy()}, ours)])


# --- text ----------------------------------------------------------------------------------------------------------


class _TextProbabilities(nn.Module):
    def __init__(self, predictor: Adapted) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.predictor(Tokens(input_ids, attention_mask)).float(), dim=-1)


def _encoders(classifier: Classifier) -> list[nn.Module]:
    """The exportable text models the predictor runs (its own, the method's, or the frozen model a method holds
    aside): those with ``export_tokenizer()``, which take :class:`~fewshot.data.inputs.Tokens`."""
    found: list[nn.Module] = []
    for root in (classifier.predictor, classifier.method, getattr(classifier.method, "model", None)):
        if isinstance(root, nn.Module):
            found += [m for m in root.modules()
                      if callable(getattr(m, "export_tokenizer", None)) and all(m is not f for f in found)]
    return found


def _text_graph(classifier: Classifier, example: Sequence[str] | None) -> _Graph:
    encoders = _encoders(classifier)
    if not encoders:
        raise FewShotError(f"ONNX export of text classifiers covers all-MiniLM-L6-v2 models (those that take "
                           f"token ids); this {classifier.info['method']} classifier runs "
                           f"{classifier.config.model.name!r}")
    sentences = list(CHECK_SENTENCES if example is None else example)
    if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise FewShotError("a text classifier's export example is a list of non-empty sentences")
    tokenizer = encoders[0].export_tokenizer()
    ours = classifier.predict_proba(sentences)  # the strings through PyTorch, as `predict` runs them

    def feed(rows: Sequence[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer.encode_batch(list(rows))
        return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}

    checks = [(feed(sentences), ours)] + [(feed([s]), ours[i : i + 1]) for i, s in enumerate(sentences)]
    trace = {k: torch.from_numpy(v) for k, v in feed(sentences[:2] if len(sentences) > 1 else sentences).items()}
    axes = {"batch": 0, "tokens": 1}
    dynamic = {"input_ids": {v: k for k, v in axes.items()}, "attention_mask": {v: k for k, v in axes.items()},
               "probabilities": {0: "batch"}}
    module = _TextProbabilities(classifier.predictor).eval()
    return _Graph(module, (trace["input_ids"], trace["attention_mask"]),
                  ["input_ids", "attention_mask"], dynamic, checks,
                  {"fewshot_tokenizer": tokenizer.to_str(), "fewshot_inputs": "input_ids, attention_mask"})


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings and the graph a failed trace prints (from C++, to the file descriptors) are not the
    user's business."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
