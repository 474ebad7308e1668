"""Classify your own few examples: a support set (a folder of images or a CSV of text) and some queries.

The model is a trained run (a run folder or checkpoint: MAML, ProtoNet, Reptile, ...) or a recipe that needs no
training (``train.iterations: 0``: feature extraction, fine-tuning or prompt tuning of a pretrained model). Images are
prepared as the model's checkpoint records (or, for older checkpoints and recipes, as its data set describes them:
:class:`fewshot.data.base.ImageInput`: size, channels, resize mode, polarity). The support-reading and preparing steps
here are shared with :mod:`fewshot.classifier` (``fewshot fit`` / ``predict``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.config import RunConfig, apply_overrides, load_config
from fewshot.data.base import ImageInput
from fewshot.data.inputs import to_device
from fewshot.defaults import model_note
from fewshot.engine.checkpoint import checkpoint_input, describe_input, load_checkpoint
from fewshot.engine.experiment import build_method, method_class
from fewshot.engine.scoring import load_weights
from fewshot.errors import FewShotError
from fewshot.methods.base import Method

RECIPE_SUFFIXES = (".yaml", ".yml")
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass
class Prediction:
    query: str
    label: str
    probability: float
    scores: dict[str, float]


@dataclass
class Support:
    """A user's labelled support set, read and checked; images are listed but not decoded yet (how depends on the
    model: :func:`prepare_support`)."""

    path: Path
    modality: str
    """``images`` or ``text``."""
    class_names: list[str]
    shots: list[int]
    """Examples per class, in ``class_names`` order."""
    folders: list[Any] | None = None
    """Images: the class folders (:class:`fewshot.data.image_folder.ClassFolder`)."""
    texts: list[list[str]] | None = None
    """Text: each class's sentences."""
    encoded: Any = None
    """Images from a saved data set, still encoded (:class:`~fewshot.data.hf_disk.EncodedImages`)."""
    source: str = ""
    """What was read, in words (for the model card)."""


def read_support(support: str | Path, text_column: str = "text", label_column: str = "label",
                 image_column: str | None = None) -> Support:
    """Read the user's support set: a folder of class folders (images), a CSV / TSV / JSON Lines file (text) or a
    saved Hugging Face data set (images when ``image_column`` is given or it has an ``Image`` column and no
    ``text_column``; else text). Clear errors for anything else, an empty class, fewer than two classes."""
    path = Path(support)
    from fewshot.data.hf_disk import is_saved_dataset

    if is_saved_dataset(path):
        from fewshot.data.hf_disk import image_columns, load_hf_images, load_hf_text, open_saved

        saved = open_saved(path)
        if image_column is not None or (text_column not in saved.column_names and image_columns(saved)):
            images = load_hf_images(path, image_column, label_column)
            return Support(path, "images", images.class_names, images.class_sizes, encoded=images,
                           source=f"Hugging Face data set {path.name} (images, column {label_column!r})")
        data = load_hf_text(path, text_column, label_column)
        return Support(path, "text", data.class_names, data.class_sizes.tolist(), texts=data.texts,
                       source=f"Hugging Face data set {path.name} (columns {text_column!r}, {label_column!r})")
    if path.is_dir():
        from fewshot.data.image_folder import class_folders

        folders = class_folders(path)
        return Support(path, "images", [f.name for f in folders], [len(f.images) for f in folders], folders=folders,
                       source=f"image folder {path.name}")
    if path.suffix.lower() in TEXT_SUFFIXES:
        from fewshot.data.csv_text import load_csv_text

        data = load_csv_text(path, text_column, label_column)
        return Support(path, "text", data.class_names, data.class_sizes.tolist(), texts=data.texts,
                       source=f"{path.suffix[1:].upper()} file {path.name} (columns {text_column!r}, {label_column!r})")
    if not path.exists():
        raise FewShotError(f"support {path} does not exist; pass a folder of class folders (images) or a "
                           f"{' / '.join(TEXT_SUFFIXES)} file of labelled text")
    raise FewShotError(f"support {path} must be a folder of class folders (images) or a "
                       f"{' / '.join(TEXT_SUFFIXES)} file of labelled text")


def load_model(model: str | Path, way: int) -> tuple[Method, RunConfig]:
    """A method ready to adapt: from a run folder / checkpoint (with its weights) or a recipe that needs no
    training (a name or a YAML file)."""
    method, config, _ = load_model_input(model, way)
    return method, config


def load_model_input(model: str | Path, way: int, overrides: Sequence[str] = ()
                     ) -> tuple[Method, RunConfig, ImageInput | None]:
    """:func:`load_model` and how the model takes images (the checkpoint's recorded ``input``, else its config's data
    set's; ``None`` for text models). ``overrides`` (``key=value``, as ``fewshot eval`` takes them) change the
    model's config before it is built: how it adapts (``method.test_inner_steps=20``, ``method.head_init=zeros``),
    its device or threads; a key that changes the weights' shapes is refused when they are loaded."""
    path = Path(model)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if path.suffix.lower() not in RECIPE_SUFFIXES and (path.suffix == ".safetensors" or path.exists()):
        ckpt = load_checkpoint(path)
        config = RunConfig.from_dict(apply_overrides(ckpt.config, list(overrides)))
        spec = checkpoint_input(ckpt)
        head_way = config.train.way  # the output layer it was trained with, if it has one
        method = build_method(config, head_way)
        load_weights(method, ckpt.weights, path)
    else:
        config = load_config(str(model), list(overrides))
        if config.train.iterations > 0:
            raise FewShotError(f"recipe {config.name} must be trained first (fewshot train {config.name}); "
                               "pass its run folder or checkpoint")
        described = describe_input(config)
        spec = None if described is None else ImageInput.from_dict(described)
        head_way = way
        method = build_method(config, head_way)
        if method_class(config).needs_head:
            config.train.way = head_way  # the output layer it is built with (a saved classifier rebuilds it so)
    method_cls = method_class(config)
    # MAML, ANIL, Reptile build each task's head (method.head_init); a method that cannot needs the trained way
    if method_cls.needs_head and not method_cls.builds_head and way != head_way:
        raise FewShotError(f"this {config.method.name} model has a {head_way}-way output layer and cannot build "
                           f"one for another number of classes, but the support set has {way} classes")
    config.train.use_threads()
    return method.to(config.train.torch_device()).eval(), config, spec


def image_input(config: RunConfig) -> ImageInput:
    """How the model's data set prepares images (its options' ``image_input()``)."""
    described = describe_input(config)
    if described is None:
        raise FewShotError(f"the model was trained on {config.data.name!r}, which does not describe image inputs; "
                           "classify images with a model trained on images")
    return ImageInput.from_dict(described)


def require_images(spec: ImageInput | None, config: RunConfig) -> ImageInput:
    if spec is None:
        raise FewShotError(f"the model was trained on {config.data.name!r}, which does not describe image inputs; "
                           "classify images with a model trained on images")
    return spec


def looks_inverted(images: torch.Tensor) -> bool:
    """Dark strokes on a light background (uint8 images)."""
    return float(images.float().mean()) > 127


def prepare_images(images: torch.Tensor, spec: ImageInput, flip: bool) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` (as :func:`fewshot.data.image_folder.load_image` gives) as the model takes them:
    inverted if ``flip``, float in [0, 1], without the channel axis where the model wants none."""
    if flip:
        images = 255 - images
    x = images.float() / 255
    return x[:, 0] if spec.squeeze else x


def load_images(paths: list[Path], spec: ImageInput) -> torch.Tensor:
    """The images at ``paths`` as uint8 ``[N, C, size, size]``, decoded and resized as ``spec`` says."""
    from fewshot.data.image_folder import load_image

    return torch.stack([torch.from_numpy(load_image(p, spec.size, spec.channels, spec.resize).copy())
                        for p in paths])


@dataclass
class PreparedSupport:
    x: Any
    y: torch.Tensor
    flip: bool = False
    """Images: whether they were inverted (dark strokes on light, for a model trained on bright-on-dark strokes)."""


def prepare_support(support: Support, spec: ImageInput | None, config: RunConfig, invert: str = "auto",
                    note: Callable[[str], None] | None = None) -> PreparedSupport:
    """The support set as the model takes it: images decoded as ``spec`` says (``invert``: ``auto``, ``yes`` or
    ``no``), texts as one list; labels ``0..way-1`` in ``support.class_names`` order."""
    if support.modality == "text":
        if spec is not None:
            raise FewShotError(f"the support set is text, but the model was trained on images ({config.data.name!r}); "
                               "use a text model")
        assert support.texts is not None
        x = [t for texts in support.texts for t in texts]
        y = torch.tensor([c for c, texts in enumerate(support.texts) for _ in texts])
        return PreparedSupport(x, y)
    from fewshot.data.image_folder import image_folder

    spec = require_images(spec, config)
    if support.encoded is not None:  # a saved data set's images: decoded here, now that the size is known
        images, labels = support.encoded.decode(spec.size, spec.channels, spec.resize)
    else:
        data = image_folder(support.path, size=spec.size, channels=spec.channels, min_per_class=1,
                            resize=spec.resize)
        if note is not None:
            _note_layout(data, note)
        images, labels = data.images, data.labels
    flip = spec.bright_on_dark and (invert == "yes" or invert == "auto" and looks_inverted(images))
    return PreparedSupport(prepare_images(images, spec, flip), labels, flip)



def adapt(method: Method, x: Any, y: torch.Tensor, way: int) -> Any:
    """``method.adapt`` as a user's classifier needs it: not transductive (a user's answer must not depend on what
    else they asked), from a fixed random state (the same predictor on every call; the caller's state is kept)."""
    method.transductive = False
    device = method.device
    with torch.random.fork_rng(devices=[]):  # the same answers on every call (Reptile draws mini-batches, ...)
        torch.random.default_generator.manual_seed(0)
        return method.adapt(to_device(x, device), y.to(device), way)


def read_queries(path: str | Path, column: str = "text") -> list[str]:
    """The text queries in one column of a CSV / TSV (or one key of a JSON Lines) file."""
    from fewshot.data.csv_text import load_text_column

    return load_text_column(path, column)


def classify(
    model: str | Path, support: str | Path, queries: list[str], text_column: str = "text",
    label_column: str = "label", invert: str = "auto", notes: Callable[[str], None] | None = None,
    image_column: str | None = None, overrides: Sequence[str] = (),
) -> list[Prediction]:
    """Adapt ``model`` to the labelled ``support`` set and classify each query (image path or sentence).

    Each query's answer is its own: it never depends on the other queries of the call (a method that can score the
    queries together, :attr:`fewshot.methods.base.Method.transductive`, is asked not to), nor on earlier calls (the
    adaptation runs from a fixed random state; the caller's is left as it was). ``notes`` receives what the user
    should know but that is not an error (files ignored, images found in sub-folders, the model's measured figure at
    the support set's shot count and number of classes where our results have one). ``overrides``: as
    :func:`load_model_input` takes them.
    """
    note = notes or (lambda message: None)
    data = read_support(support, text_column, label_column, image_column)
    names = data.class_names
    if data.modality == "images":
        paths = _image_paths(queries, note)
        method, config, spec = load_model_input(model, len(names), overrides)
        spec = require_images(spec, config)
        prepared = prepare_support(data, spec, config, invert, note)
        query_items: Any = prepare_images(load_images(paths, spec), spec, prepared.flip)
        labels = [str(p) for p in paths]
    else:
        query_items = _text_queries(queries)
        method, config, spec = load_model_input(model, len(names), overrides)
        method.set_class_names(names)
        prepared = prepare_support(data, spec, config, invert, note)
        labels = list(query_items)
    measured = model_note(str(model), data.modality, min(data.shots), len(names), overrides)
    if measured is not None:
        note(measured[1])
    predictor = adapt(method, prepared.x, prepared.y, len(names))
    with torch.no_grad():
        probs = torch.softmax(predictor(to_device(query_items, method.device)).float(), dim=-1).cpu()
    out = []
    for query, p in zip(labels, probs, strict=True):
        best = int(p.argmax())
        out.append(Prediction(query, names[best], float(p[best]), {n: float(v) for n, v in zip(names, p)}))
    return out


def _text_queries(queries: list[str]) -> list[str]:
    if not queries:
        raise FewShotError("no queries to classify: give sentences after the support file, or --queries-csv")
    empty = [i + 1 for i, q in enumerate(queries) if not q.strip()]
    if empty:
        raise FewShotError(f"query {empty[0]} of {len(queries)} is empty; give each query some text")
    return [q.strip() for q in queries]


def _note_layout(data: Any, note: Callable[[str], None]) -> None:
    for name, folders in data.nested.items():
        shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
        note(f"class {name!r} includes the images in its sub-folders ({shown})")
    if data.ignored:
        note(f"ignored {len(data.ignored)} file(s) in the support folder that are not images of a supported type, "
             f"e.g. {data.ignored[0]}")


def _image_paths(queries: list[str], note: Callable[[str], None]) -> list[Path]:
    from fewshot.data.image_folder import EXTENSIONS, find_images

    if not queries:
        raise FewShotError("no query images to classify: give image files or folders after the support folder")
    paths: list[Path] = []
    for q in queries:
        p = Path(q)
        if p.is_dir():
            found, others = find_images(p)
            if not found:
                held = f"; it holds {len(others)} other file(s), e.g. {others[0].name}" if others else " (it is empty)"
                raise FewShotError(f"query folder {p} has no images ({', '.join(EXTENSIONS)}){held}")
            if others:
                note(f"ignored {len(others)} file(s) in query folder {p} that are not images of a supported type, "
                     f"e.g. {others[0]}")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise FewShotError(f"query image {p} does not exist")
    return paths
