"""Checkpoints: one safetensors file per checkpoint, written atomically, loaded without unpickling.

A training checkpoint holds the method's weights (``model.*``), the optimizer's tensors (``optim.*``), the torch RNG
state (``rng.torch``; one row per process for a distributed run), and JSON metadata (iteration, config — with
``train.world_size`` —, optimizer hyper-parameters, best validation score) and how the model's inputs are prepared
(``input``: the data set's :class:`~fewshot.data.base.ImageInput` as a mapping, null for text; a checkpoint written
before it was recorded derives it from its config, :func:`checkpoint_input`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fewshot.data.base import ImageInput
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, atomic_write, parse_json

FORMAT = "fewshot-checkpoint-v1"


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    iteration: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    rng: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] | None = None
    """How inputs are prepared (:meth:`ImageInput.to_dict`); ``None``: derived from ``config`` when saved."""


def describe_input(config: dict[str, Any] | Any) -> dict[str, Any] | None:
    """How the data set a config names prepares images (its options' ``image_input()``, as a mapping); ``None`` for a
    data set that does not describe image inputs (text) or a config too incomplete to say."""
    from fewshot import registry
    from fewshot.config import RunConfig, component_options

    try:
        run = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        options = component_options(run.data, registry.DATASETS, "data")
    except (FewShotError, KeyError, TypeError, ValueError):
        return None
    describe = getattr(options, "image_input", None)
    return describe().to_dict() if callable(describe) else None


def checkpoint_input(ckpt: Checkpoint) -> ImageInput | None:
    """How the checkpoint's model takes images: its recorded ``input``, else (older checkpoints) what its config's
    data set says; ``None`` for text models."""
    if ckpt.input is not None:
        return ImageInput.from_dict(ckpt.input, "the checkpoint's input metadata")
    derived = describe_input(ckpt.config)
    return None if derived is None else ImageInput.from_dict(derived)


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (a temporary file, fsync, then rename)."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in ckpt.weights.items()}
    meta: dict[str, Any] = {"format": FORMAT, "iteration": ckpt.iteration, "config": ckpt.config, "extra": ckpt.extra,
                            "input": ckpt.input if ckpt.input is not None else describe_input(ckpt.config)}
    if ckpt.optimizer is not None:
        groups = ckpt.optimizer["param_groups"]
        meta["optimizer_groups"] = groups
        meta["optimizer_scalars"] = {}
        for index, state in ckpt.optimizer["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    meta["optimizer_scalars"][f"{index}.{key}"] = value
    if ckpt.rng is not None:
        tensors["rng.torch"] = ckpt.rng
    # written by us rather than safetensors' save_file, which creates owner-only (0600) files
    atomic_write(path, save(tensors, metadata={"fewshot": json.dumps(meta)}))


MODEL_EXTRA = ("best_val_accuracy", "best_val_iteration", "wall_seconds")
"""What a model file keeps of a run checkpoint's ``extra``: its best validation score and training time."""


def model_only(ckpt: Checkpoint) -> Checkpoint:
    """The model of a run checkpoint, to share or ship: weights, config, input preparation, iteration and
    :data:`MODEL_EXTRA`; no optimizer or random state (``fewshot eval`` and ``fewshot fit --model`` take it)."""
    extra = {key: ckpt.extra[key] for key in MODEL_EXTRA if key in ckpt.extra}
    return Checkpoint(ckpt.weights, ckpt.iteration, ckpt.config, extra=extra, input=ckpt.input)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Anything else is refused with a clear error naming the problem: a file that is not safetensors (or is cut
    short), metadata of another format or version or of the wrong types, and weights that are not finite (a checkpoint
    of a diverged run scores at chance, so it is refused rather than scored).
    """
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"no checkpoint at {path}")
    try:
        blob = path.read_bytes()  # one read of one file, even if a running training replaces it meanwhile
        tensors = load(blob)
        size = int.from_bytes(blob[:8], "little")
        text = (json.loads(blob[8 : 8 + size]).get("__metadata__") or {}).get("fewshot")
    except (SafetensorError, OSError, ValueError, AttributeError) as exc:
        raise FewShotError(f"{path} is not a readable fewshot checkpoint (damaged, cut short, or not safetensors): "
                           f"{exc}") from exc
    meta = _metadata(path, text)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for name, tensor in weights.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise FewShotError(f"{path}: weight tensor {name!r} holds {bad} NaN or infinite value(s) of "
                                   f"{tensor.numel()}; the run diverged or the file is damaged, so it is not scored "
                                   f"(use another checkpoint, or retrain)")
    optimizer = None
    if "optimizer_groups" in meta:
        state: dict[int, dict[str, Any]] = {}
        try:
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value
            for key, value in meta.get("optimizer_scalars", {}).items():
                index, name = key.split(".", 1)
                state.setdefault(int(index), {})[name] = value
        except ValueError as exc:
            raise FewShotError(f"{path} has optimizer state under a malformed name: {exc}") from exc
        optimizer = {"state": state, "param_groups": meta["optimizer_groups"]}
    rng = tensors.get("rng.torch")
    if rng is not None and rng.dtype != torch.uint8:
        raise FewShotError(f"{path}: its random state 'rng.torch' is {rng.dtype}, not uint8")
    return Checkpoint(weights, meta.get("iteration", 0), meta.get("config", {}), optimizer, rng,
                      meta.get("extra", {}), meta.get("input"))


META_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "config": (dict, "a mapping"), "extra": (dict, "a mapping"), "input": ((dict, type(None)), "a mapping or null"),
    "optimizer_groups": (list, "a list"), "optimizer_scalars": (dict, "a mapping")}


def _metadata(path: Path, text: str | None) -> dict[str, Any]:
    """The checkpoint's ``fewshot`` metadata, its format and the types of its fields checked."""
    if text is None:
        raise FewShotError(f"{path} is a safetensors file without fewshot metadata: not a fewshot checkpoint")
    try:
        meta = parse_json(text)
    except JSONReadError as exc:
        raise FewShotError(f"{path} has damaged fewshot metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise FewShotError(f"{path} has damaged fewshot metadata: a JSON {type(meta).__name__}, not an object")
    found = meta.get("format")
    if found != FORMAT:
        if isinstance(found, str) and found.startswith("fewshot-checkpoint-"):
            raise FewShotError(f"{path} is a fewshot checkpoint of format {found!r}, which this fewshot does not "
                               f"read (it reads {FORMAT!r}); use the fewshot version that wrote it")
        raise FewShotError(f"{path} is not a fewshot checkpoint (format {found!r}, expected {FORMAT!r})")
    iteration = meta.get("iteration", 0)
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise FewShotError(f"{path} has damaged fewshot metadata: iteration is {iteration!r}, not a count")
    for key, (kind, words) in META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            raise FewShotError(f"{path} has damaged fewshot metadata: {key} is a {type(meta[key]).__name__}, "
                               f"not {words}")
    if any(not isinstance(group, dict) for group in meta.get("optimizer_groups", [])):
        raise FewShotError(f"{path} has damaged fewshot metadata: optimizer_groups must hold mappings")
    return meta
