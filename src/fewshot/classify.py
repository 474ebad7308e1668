"""Classify your own few examples: a support set (a folder of images or a CSV of text) and some queries.

The model is a trained run (a run folder or checkpoint: MAML, ProtoNet, Reptile, ...) or a recipe that needs no
training (``train.iterations: 0``: feature extraction, fine-tuning or prompt tuning of a pretrained model). Images are
prepared as the model's data set describes them (:class:`fewshot.data.base.ImageInput`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot import registry
from fewshot.config import RunConfig, component_options, load_config
from fewshot.data.base import ImageInput
from fewshot.data.inputs import to_device
from fewshot.engine.checkpoint import load_checkpoint
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


def load_model(model: str | Path, way: int) -> tuple[Method, RunConfig]:
    """A method ready to adapt: from a run folder / checkpoint (with its weights) or a recipe that needs no
    training (a name or a YAML file)."""
    path = Path(model)
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if path.suffix.lower() not in RECIPE_SUFFIXES and (path.suffix == ".safetensors" or path.exists()):
        ckpt = load_checkpoint(path)
        config = RunConfig.from_dict(ckpt.config)
        head_way = config.train.way  # the output layer it was trained with, if it has one
        method = build_method(config, head_way)
        load_weights(method, ckpt.weights, path)
    else:
        config = load_config(str(model))
        if config.train.iterations > 0:
            raise FewShotError(f"recipe {config.name} must be trained first (fewshot train {config.name}); "
                               "pass its run folder or checkpoint")
        head_way = way
        method = build_method(config, head_way)
    method_cls = method_class(config)
    # MAML, ANIL, Reptile build each task's head (method.head_init); a method that cannot needs the trained way
    if method_cls.needs_head and not method_cls.builds_head and way != head_way:
        raise FewShotError(f"this {config.method.name} model has a {head_way}-way output layer and cannot build "
                           f"one for another number of classes, but the support set has {way} classes")
    config.train.use_threads()
    return method.to(config.train.torch_device()).eval(), config


def image_input(config: RunConfig) -> ImageInput:
    """How the model's data set prepares images (its options' ``image_input()``)."""
    options = component_options(config.data, registry.DATASETS, "data")
    describe = getattr(options, "image_input", None)
    if not callable(describe):
        raise FewShotError(f"the model was trained on {config.data.name!r}, which does not describe image inputs; "
                           "classify images with a model trained on images")
    return describe()


def _looks_inverted(images: torch.Tensor) -> bool:
    return float(images.float().mean()) > 127  # dark strokes on a light background


def read_queries(path: str | Path, column: str = "text") -> list[str]:
    """The text queries in one column of a CSV / TSV (or one key of a JSON Lines) file."""
    from fewshot.data.csv_text import load_text_column

    return load_text_column(path, column)


def classify(
    model: str | Path, support: str | Path, queries: list[str], text_column: str = "text",
    label_column: str = "label", invert: str = "auto", notes: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Adapt ``model`` to the labelled ``support`` set and classify each query (image path or sentence).

    Each query's answer is its own: it never depends on the other queries of the call (a method that can score the
    queries together, :attr:`fewshot.methods.base.Method.transductive`, is asked not to), nor on earlier calls (the
    adaptation runs from a fixed random state; the caller's is left as it was). ``notes`` receives what the user
    should know but that is not an error (files ignored, images found in sub-folders).
    """
    support = Path(support)
    note = notes or (lambda message: None)
    if support.is_dir():
        from fewshot.data.image_folder import class_folders, image_folder

        classes = class_folders(support)
        paths = _image_paths(queries, note)
        method, config = load_model(model, len(classes))
        spec = image_input(config)
        data = image_folder(support, size=spec.size, channels=spec.channels, min_per_class=1)
        _note_layout(data, note)
        query_images = _load_queries(paths, spec)
        flip = spec.bright_on_dark and (invert == "yes" or invert == "auto" and _looks_inverted(data.images))
        support_x, query_x = data.images, query_images
        if flip:
            support_x, query_x = 255 - support_x, 255 - query_x
        support_x, query_x = support_x.float() / 255, query_x.float() / 255
        if spec.squeeze:
            support_x, query_x = support_x[:, 0], query_x[:, 0]
        support_y, names, labels = data.labels, data.class_names, [str(p) for p in paths]
        query_items: Any = query_x
    elif support.suffix.lower() in TEXT_SUFFIXES:
        from fewshot.data.csv_text import load_csv_text

        data = load_csv_text(support, text_column, label_column)
        names = data.class_names
        query_items = _text_queries(queries)
        method, config = load_model(model, len(names))
        method.set_class_names(names)
        support_x = [t for texts in data.texts for t in texts]
        support_y = torch.tensor([c for c, texts in enumerate(data.texts) for _ in texts])
        labels = list(query_items)
    elif not support.exists():
        raise FewShotError(f"support {support} does not exist; pass a folder of class folders (images) or a "
                           f"{' / '.join(TEXT_SUFFIXES)} file of labelled text")
    else:
        raise FewShotError(f"support {support} must be a folder of class folders (images) or a "
                           f"{' / '.join(TEXT_SUFFIXES)} file of labelled text")
    method.transductive = False  # a user's answer must not depend on what else they asked
    device = method.device
    with torch.random.fork_rng(devices=[]):  # the same answers on every call (Reptile draws mini-batches, ...)
        torch.random.default_generator.manual_seed(0)
        predictor = method.adapt(to_device(support_x, device), support_y.to(device), len(names))
        with torch.no_grad():
            probs = torch.softmax(predictor(to_device(query_items, device)).float(), dim=-1).cpu()
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


def _load_queries(paths: list[Path], spec: ImageInput) -> torch.Tensor:
    from fewshot.data.image_folder import load_image

    return torch.stack([torch.from_numpy(load_image(p, spec.size, spec.channels).copy()) for p in paths])


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
