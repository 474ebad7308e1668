"""Classify your own few examples: a support set (a folder of images or a CSV of text) and some queries.

The model is a trained run (a run folder or checkpoint: MAML, ProtoNet, Reptile, ...) or a recipe that needs no
training (``train.iterations: 0``: feature extraction, fine-tuning or prompt tuning of a pretrained model). Images are
prepared as the model's data set describes them (:class:`fewshot.data.base.ImageInput`).
"""

from __future__ import annotations

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
        method = build_method(config, config.eval.way)
        load_weights(method, ckpt.weights, path)
    else:
        config = load_config(str(model))
        if config.train.iterations > 0:
            raise FewShotError(f"recipe {config.name} must be trained first (fewshot train {config.name}); "
                               "pass its run folder or checkpoint")
        method = build_method(config, way)
    if method_class(config).needs_head and way != config.eval.way:
        raise FewShotError(f"this {config.method.name} model has a {config.eval.way}-way output layer, but the "
                           f"support set has {way} classes")
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


def classify(
    model: str | Path, support: str | Path, queries: list[str], text_column: str = "text",
    label_column: str = "label", invert: str = "auto",
) -> list[Prediction]:
    """Adapt ``model`` to the labelled ``support`` set and classify each query (image path or sentence)."""
    support = Path(support)
    if support.is_dir():
        from fewshot.data.image_folder import image_folder, load_image

        probe = image_folder(support, size=8, channels=1, min_per_class=1)
        way = len(probe.class_names)
        method, config = load_model(model, way)
        spec = image_input(config)
        data = image_folder(support, size=spec.size, channels=spec.channels, min_per_class=1)
        paths = _image_paths(queries)
        if not paths:
            raise FewShotError("no query images to classify")
        query_images = torch.stack([torch.from_numpy(load_image(p, spec.size, spec.channels).copy()) for p in paths])
        flip = spec.bright_on_dark and (invert == "yes" or invert == "auto" and _looks_inverted(data.images))
        support_x, query_x = data.images, query_images
        if flip:
            support_x, query_x = 255 - support_x, 255 - query_x
        support_x, query_x = support_x.float() / 255, query_x.float() / 255
        if spec.squeeze:
            support_x, query_x = support_x[:, 0], query_x[:, 0]
        support_y, names, labels = data.labels, data.class_names, [str(p) for p in paths]
        query_items: Any = query_x
    elif support.suffix.lower() in (".csv", ".tsv"):
        from fewshot.data.csv_text import load_csv_text

        data = load_csv_text(support, text_column, label_column, delimiter="\t" if support.suffix == ".tsv" else ",")
        names = data.class_names
        method, config = load_model(model, len(names))
        method.set_class_names(names)
        support_x = [t for texts in data.texts for t in texts]
        support_y = torch.tensor([c for c, texts in enumerate(data.texts) for _ in texts])
        query_items = list(queries)
        labels = list(queries)
    else:
        raise FewShotError(f"support {support} must be a folder of class folders (images) or a .csv of text")
    if not labels:
        raise FewShotError("no queries to classify")
    device = method.device
    predictor = method.adapt(to_device(support_x, device), support_y.to(device), len(names))
    with torch.no_grad():
        probs = torch.softmax(predictor(to_device(query_items, device)).float(), dim=-1).cpu()
    out = []
    for query, p in zip(labels, probs):
        best = int(p.argmax())
        out.append(Prediction(query, names[best], float(p[best]), {n: float(v) for n, v in zip(names, p)}))
    return out


def _image_paths(queries: list[str]) -> list[Path]:
    from fewshot.data.image_folder import EXTENSIONS

    paths: list[Path] = []
    for q in queries:
        p = Path(q)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS)
        elif p.exists():
            paths.append(p)
        else:
            raise FewShotError(f"query image {p} does not exist")
    return paths
