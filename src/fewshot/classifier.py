"""Fitted classifiers: adapt a model to your labelled examples once, save it, and predict with it later.

``fit(support)`` reads a support set (a folder of class folders of images, a CSV / TSV / JSON Lines file or a saved
Hugging Face data set of labelled text: :func:`fewshot.classify.read_support`), picks a model (given, or the best of
our measured results at its shot count: :mod:`fewshot.defaults`), adapts it once and returns a :class:`Classifier`.

A saved classifier is a directory:

* ``model.safetensors`` — the method's weights (``method.*``: body, head, meta-learned prompt...) and the adapted
  state (``adapted.*``: what :meth:`Method.adapt` produced, rebuilt by :meth:`Method.restore` without adapting);
* ``config.json`` — format version, the fewshot / torch / transformers versions that wrote it, the model's run
  config, method, preprocessing (:class:`~fewshot.data.base.ImageInput` and whether images were inverted), class
  names, shots per class, the weights' SHA-256, and the figure the model was chosen by;
* ``README.md`` — a model card generated from the same facts.

Loading (:func:`from_pretrained`) checks all of it and refuses a malformed or incompatible directory with one
:class:`FewShotError` line. Predictions are never transductive: each input's answer is its own, whatever else is
predicted with it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fewshot import __version__
from fewshot.classify import (
    adapt,
    load_images,
    load_model_input,
    prepare_images,
    prepare_support,
    read_support,
    require_images,
)
from fewshot.config import RunConfig
from fewshot.data.base import ImageInput
from fewshot.data.inputs import to_device
from fewshot.defaults import Choice, choose, measured_as, model_note
from fewshot.engine.experiment import build_method, method_class
from fewshot.engine.scoring import load_weights
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, atomic_write, read_json
from fewshot.methods.base import Adapted, Method

FORMAT = "fewshot-classifier-v1"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"
ONNX = "model.onnx"
"""Where ``fewshot export --onnx`` writes by default."""
MODALITIES = ("images", "text")


def _versions() -> dict[str, str | None]:
    try:
        import transformers

        text: str | None = transformers.__version__
    except ImportError:
        text = None
    return {"fewshot": __version__, "torch": torch.__version__.split("+")[0], "transformers": text}


class Classifier:
    """A model adapted to a labelled support set: ``predict``, ``predict_proba``, ``classes``, ``save_pretrained``."""

    def __init__(self, method: Method, predictor: Adapted, config: RunConfig, classes: Sequence[str],
                 info: dict[str, Any]) -> None:
        self.method, self.predictor, self.config = method, predictor, config
        self.classes = list(classes)
        self.info = info
        self.modality: str = info["modality"]
        pre = info.get("preprocessing") or {}
        self.image_input = ImageInput.from_dict(pre["image"]) if pre.get("image") else None
        self.invert = bool(pre.get("invert", False))

    # --- predicting ------------------------------------------------------------------------------------------------

    def expand(self, inputs: str | Path | Iterable[str | Path], note: Callable[[str], None] | None = None
               ) -> list[str]:
        """The inputs one per item: image folders expanded to their images (sorted), sentences as given."""
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        if self.modality == "images":
            from fewshot.classify import _image_paths

            return [str(p) for p in _image_paths([str(i) for i in items], note or (lambda message: None))]
        texts = [str(t).strip() for t in items]
        empty = [i + 1 for i, t in enumerate(texts) if not t]
        if empty:
            raise FewShotError(f"input {empty[0]} of {len(texts)} is empty; give each input some text")
        return texts

    def logits_batches(self, items: list[str], batch_size: int = 256, progress: bool = False
                       ) -> Iterator[torch.Tensor]:
        """The logits of ``items`` (already expanded), ``batch_size`` at a time."""
        if batch_size < 1:
            raise FewShotError(f"the batch size must be >= 1, got {batch_size}")
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit=" inputs", file=sys.stderr, disable=not progress, leave=False)
        device = self.method.device
        # nothing cached by earlier calls: the same inputs in the same batches give the same answers, bit for bit
        self.method.forget_caches()
        try:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                if self.modality == "images":
                    spec = require_images(self.image_input, self.config)
                    x: Any = prepare_images(load_images([Path(p) for p in chunk], spec), spec, self.invert)
                else:
                    x = chunk
                with torch.no_grad():
                    yield self.predictor(to_device(x, device)).float().cpu()
                bar.update(len(chunk))
        finally:
            bar.close()

    def predict_proba(self, inputs: str | Path | Iterable[str | Path], batch_size: int = 256,
                      progress: bool = False) -> torch.Tensor:
        """Class probabilities ``[inputs, classes]`` (columns in :attr:`classes` order)."""
        items = self.expand(inputs)
        if not items:
            return torch.zeros(0, len(self.classes))
        return torch.softmax(torch.cat(list(self.logits_batches(items, batch_size, progress))), dim=-1)

    def predict(self, inputs: str | Path | Iterable[str | Path], batch_size: int = 256,
                progress: bool = False) -> list[str]:
        """The most probable class of each input."""
        return [self.classes[i] for i in self.predict_proba(inputs, batch_size, progress).argmax(-1).tolist()]

    # --- saving ----------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the classifier to ``directory`` (created; an existing classifier there is replaced, any other
        non-empty folder is refused). Each file is written atomically, the configuration last."""
        from safetensors.torch import save

        directory = Path(directory)
        check_writable(directory)
        tensors = {f"method.{k}": v for k, v in self.method.state_dict().items()}
        tensors.update({f"adapted.{k}": v for k, v in self.predictor.state_dict().items()})
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        blob = save(tensors, metadata={"fewshot": json.dumps({"format": FORMAT})})
        config = {**self.info, "format": FORMAT, "versions": _versions(), "weights": WEIGHTS,
                  "weights_sha256": hashlib.sha256(blob).hexdigest()}
        (directory / ONNX).unlink(missing_ok=True)  # an export of the classifier being replaced would be stale
        atomic_write(directory / WEIGHTS, blob)
        atomic_write(directory / CARD, model_card(config))
        atomic_write(directory / CONFIG, json.dumps(config, indent=2) + "\n")
        self.info = config
        return directory


    # --- exporting -------------------------------------------------------------------------------------------------

    def export_onnx(self, path: str | Path, example: Any = None) -> dict[str, Any]:
        """Write the classifier as an ONNX graph, checked against PyTorch first (:mod:`fewshot.onnx_export`): images
        ``[batch, ...]`` prepared as ``config.json``'s ``preprocessing`` says, or a MiniLM text classifier's
        ``input_ids`` and ``attention_mask`` (its tokenizer in the file's metadata) -> ``probabilities``."""
        from fewshot.onnx_export import export_onnx

        return export_onnx(self, path, example)


def check_writable(directory: Path) -> None:
    """Refuse to write a classifier over a file or a non-empty folder that is not a classifier."""
    if directory.exists() and not directory.is_dir():
        raise FewShotError(f"{directory} is a file, not a folder; choose another place for the classifier")
    if directory.is_dir() and any(directory.iterdir()) and not is_classifier(directory):
        raise FewShotError(f"{directory} is a non-empty folder that is not a fewshot classifier; it is left as it is "
                           "(choose a new or empty folder)")


def is_classifier(directory: Path) -> bool:
    """Whether ``directory`` holds a saved classifier (its ``config.json`` names a classifier format)."""
    try:
        config = read_json(Path(directory) / CONFIG)
    except JSONReadError:
        return False
    return isinstance(config, dict) and str(config.get("format", "")).startswith("fewshot-classifier-")


# --- fitting -------------------------------------------------------------------------------------------------------


def fit(support: str | Path, model: str | Path | None = None, method: str | None = None, text_column: str = "text",
        label_column: str = "label", invert: str = "auto", notes: Callable[[str], None] | None = None,
        image_column: str | None = None, overrides: Sequence[str] = ()) -> Classifier:
    """Adapt a model to the labelled examples in ``support`` once; returns the :class:`Classifier`.

    ``model``: a run folder, checkpoint (``zoo/*.safetensors``) or recipe needing no training; by default the best of
    our results at the support set's shot count and number of classes (``method`` narrows that choice to one method;
    ``notes`` receives a line saying what was chosen and why, or, for a model our tables measure, its figure at that
    number of classes; and other remarks). ``overrides`` (``key=value``) change the model's config
    before it adapts (``method.test_inner_steps=20``); the saved classifier keeps the config it ran with.
    """
    note = notes or (lambda message: None)
    data = read_support(support, text_column, label_column, image_column)
    way, shots = len(data.class_names), min(data.shots)
    choice: Choice | None = None
    if model is None:
        choice = choose(data.modality, shots, way, method)
        model = choice.model
        note(f"default model: {choice.reason}{measured_as(overrides)}")
    elif method is not None:
        raise FewShotError("give --model or --method, not both (--method picks among the default models)")
    loaded, config, spec = load_model_input(model, way, overrides)
    if choice is None and (measured := model_note(str(model), data.modality, shots, way, overrides)) is not None:
        choice, line = measured
        note(line)
    if data.modality == "text":
        loaded.set_class_names(data.class_names)
    prepared = prepare_support(data, spec, config, invert, note)
    predictor = adapt(loaded, prepared.x, prepared.y, way)
    if not isinstance(predictor, Adapted):
        raise FewShotError(f"method {config.method.name!r} returned a predictor that cannot be saved "
                           f"({type(predictor).__name__}, not an Adapted module)")
    info = {
        "modality": data.modality, "model": str(model), "method": config.method.name, "config": config.to_dict(),
        "classes": data.class_names, "shots": dict(zip(data.class_names, data.shots, strict=True)),
        "support": data.source, "transductive": False,
        "preprocessing": ({"image": spec.to_dict(), "invert": prepared.flip} if data.modality == "images"
                          else {"text": "each input's text, stripped of surrounding spaces"}),
        "expected": _expected(choice),
    }
    return Classifier(loaded, predictor.eval(), config, data.class_names, info)


def _expected(choice: Choice | None) -> dict[str, Any] | None:
    """The measured figure behind the model: the default's, or that of the same model in our tables."""
    if choice is None:
        return None
    way = {} if choice.way is None else {"way": choice.way}
    return {"accuracy": round(choice.accuracy, 2), "shots": choice.shots, **way, "source": choice.source,
            "figure": choice.reason}


# --- loading -------------------------------------------------------------------------------------------------------


def _major_minor(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def read_config(directory: Path) -> dict[str, Any]:
    """A classifier directory's ``config.json``, checked: format, versions, and the fields' types."""
    if not directory.exists():
        raise FewShotError(f"no classifier at {directory} (it does not exist)")
    if not directory.is_dir():
        raise FewShotError(f"{directory} is a file, not a classifier folder (written by fewshot fit)")
    path = directory / CONFIG
    if not path.is_file():
        raise FewShotError(f"{directory} is not a fewshot classifier: it has no {CONFIG}")
    try:
        config = read_json(path)
    except JSONReadError as exc:
        raise FewShotError(f"{path} is malformed ({exc}); write the classifier again with fewshot fit") from exc
    if not isinstance(config, dict):
        raise FewShotError(f"{path} is malformed: a JSON {type(config).__name__}, not an object")
    found = config.get("format")
    if found != FORMAT:
        if isinstance(found, str) and found.startswith("fewshot-classifier-"):
            raise FewShotError(f"{directory} is a classifier of format {found!r}, which this fewshot does not read "
                               f"(it reads {FORMAT!r}); use the fewshot version that wrote it, or fit it again")
        raise FewShotError(f"{path} is not a fewshot classifier config (format {found!r}, expected {FORMAT!r})")
    expect = {"versions": dict, "modality": str, "method": str, "config": dict, "classes": list, "shots": dict,
              "preprocessing": dict, "weights_sha256": str}
    for key, kind in expect.items():
        if not isinstance(config.get(key), kind):
            what = "missing" if key not in config else f"a {type(config[key]).__name__}"
            raise FewShotError(f"{path} is malformed: {key!r} is {what}, not a {kind.__name__}")
    if config["modality"] not in MODALITIES:
        raise FewShotError(f"{path} is malformed: modality {config['modality']!r} is not one of {MODALITIES}")
    classes = config["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise FewShotError(f"{path} is malformed: 'classes' must be at least 2 distinct non-empty names")
    versions, here = config["versions"], _versions()
    saved = versions.get("fewshot")
    if not isinstance(saved, str) or _major_minor(saved) > _major_minor(__version__):
        raise FewShotError(f"{directory} was written by fewshot {saved}, newer than this fewshot {__version__}; "
                           "upgrade fewshot to read it")
    for package in ("torch", "transformers"):
        saved = versions.get(package)
        if saved and here[package] and _major_minor(saved)[0] != _major_minor(here[package])[0]:
            raise FewShotError(f"{directory} was written with {package} {saved}; this is {package} {here[package]} "
                               f"(another major version): fit it again with this one")
        if saved and not here[package]:
            raise FewShotError(f"{directory} needs {package} {saved}, which is not installed (pip install "
                               f"'fewshot[text]')")
    return config


def from_pretrained(directory: str | Path) -> Classifier:
    """Load a classifier saved by :meth:`Classifier.save_pretrained` (``fewshot fit``): nothing is adapted again."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    config = read_config(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise FewShotError(f"{directory} has no weights ({WEIGHTS} is missing); write the classifier again")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != config["weights_sha256"]:
        raise FewShotError(f"{path} is not the weights its {CONFIG} was written with (SHA-256 differs): damaged or "
                           "replaced; write the classifier again")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise FewShotError(f"{path} is not readable safetensors: {exc}") from exc
    classes = config["classes"]
    run = RunConfig.from_dict(config["config"])
    run.train.use_threads()
    # a method with an output layer has it at the way it was trained with (train.way; it builds each task's head)
    method = build_method(run, run.train.way if method_class(run).needs_head else len(classes))
    load_weights(method, {k[7:]: v for k, v in tensors.items() if k.startswith("method.")}, path)
    method = method.to(run.train.torch_device()).eval()
    method.transductive = False
    if config["modality"] == "text":
        method.set_class_names(classes)
    adapted = {k[8:]: v.to(method.device) for k, v in tensors.items() if k.startswith("adapted.")}
    predictor = method.restore(adapted, len(classes))
    if config["modality"] == "images":
        image = config["preprocessing"].get("image")
        ImageInput.from_dict(image, f"{directory / CONFIG}: preprocessing.image")
    return Classifier(method, predictor, run, classes, config)


# --- the model card ------------------------------------------------------------------------------------------------


def model_card(config: dict[str, Any]) -> str:
    """``README.md`` of a saved classifier, from its configuration."""
    classes, shots = config["classes"], list(config["shots"].values())
    shown = ", ".join(f"`{c}`" for c in classes[:20]) + (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
    pre = config["preprocessing"]
    if pre.get("image"):
        image = pre["image"]
        inverted = "inverted (dark strokes on light become bright on dark), " if pre.get("invert") else ""
        prep = (f"images converted to {'greyscale' if image['channels'] == 1 else 'RGB'}, resized to "
                f"{image['size']}x{image['size']} ({image['resize']}), {inverted}scaled to [0, 1]")
    else:
        prep = "the text as given (surrounding spaces removed)"
    expected = config.get("expected")
    if expected:
        cell = (f"{expected['way']}-way {expected['shots']}-shot tasks" if expected.get("way")
                else f"{expected['shots']} shot(s)")
        accuracy = (f"{expected['accuracy']:.2f}% — {expected['figure']}. That is our measurement on our benchmark "
                    f"at {cell}; accuracy on your data will differ.")
    else:
        accuracy = "no measured figure for this model in our results tables."
    versions = config["versions"]
    return f"""# fewshot classifier

Written by `fewshot fit` (fewshot {versions['fewshot']}, torch {versions['torch']}, transformers
{versions.get('transformers') or '—'}); load it with `fewshot predict <this folder> ...` or
`fewshot.from_pretrained("<this folder>")`.

| | |
|---|---|
| data | {config['support']} ({config['modality']}) |
| classes | {len(classes)}: {shown} |
| shots per class | min {min(shots)}, median {statistics.median(shots):g}, max {max(shots)} |
| model | `{config['model']}` |
| method | `{config['method']}` (adapted once to these examples; predictions are not transductive) |
| preprocessing | {prep} |
| expected accuracy | {accuracy} |

Files: `{WEIGHTS}` (the method's weights `method.*` and the adapted state `adapted.*`), `{CONFIG}` (everything
above, format `{FORMAT}`).
"""
