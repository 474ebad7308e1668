"""Content hashes: of tensors (a model's weights), of inputs (an embedding cache's keys), of a module, of a data set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fewshot.errors import FewShotError


def hash_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed each tensor's name and raw bytes, in the mapping's order, to a ``hashlib`` object (any dtype)."""
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def weights_sha256(weights: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors in name order (the weights, not the file that holds them)."""
    digest = hashlib.sha256()
    hash_tensors(digest, {name: weights[name] for name in sorted(weights)})
    return digest.hexdigest()


def item_keys(x: Any) -> list[bytes]:
    """A content hash per input (tensor rows or strings)."""
    if isinstance(x, torch.Tensor):
        rows = x.detach().cpu().contiguous()
        shape = str(tuple(rows.shape[1:])).encode() + str(rows.dtype).encode()
        flat = rows.reshape(rows.shape[0], -1).numpy()
        return [hashlib.blake2b(shape + row.tobytes(), digest_size=16).digest() for row in flat]
    keys = []
    for item in x:
        if not isinstance(item, str):
            raise FewShotError(f"inputs must be tensors or strings to be hashed, got {type(item).__name__}")
        keys.append(hashlib.blake2b(b"str:" + item.encode("utf-8"), digest_size=16).digest())
    return keys


def fingerprint(module: nn.Module) -> str:
    """A hash of a module's class, weights and buffers (or its own ``fingerprint()`` if it has one)."""
    own = getattr(module, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.blake2b(digest_size=12)
    digest.update(type(module).__qualname__.encode())
    precision = getattr(module, "precision", "fp32")  # a bf16 model embeds differently from the same weights
    if precision != "fp32":
        digest.update(str(precision).encode())
    hash_tensors(digest, module.state_dict())
    return digest.hexdigest()


SAMPLE_PER_CLASS = 8
"""Examples per class that :func:`dataset_fingerprint` reads (evenly spaced, the first and last included)."""


def dataset_fingerprint(dataset: Any) -> str:
    """A hash of what a :class:`~fewshot.data.base.ClassDataset` holds, through its contract only: the class names
    and sizes, and the content of up to :data:`SAMPLE_PER_CLASS` examples of every class (tensors or strings).

    Cheap (a few thousand examples for Omniglot's test split) and enough to tell the data set apart from another
    folder of images or sentences laid out the same way (a change to a few unsampled examples goes unseen).
    """
    sizes = [int(n) for n in dataset.class_sizes.tolist()]
    digest = hashlib.blake2b(digest_size=32)
    digest.update(json.dumps([list(map(str, dataset.class_names)), sizes]).encode())
    classes, examples = [], []
    for c, n in enumerate(sizes):
        k = min(n, SAMPLE_PER_CLASS)
        picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
        classes += [c] * len(picks)
        examples += picks
    for start in range(0, len(classes), 2048):
        batch = dataset.gather(torch.tensor(classes[start : start + 2048], dtype=torch.long),
                               torch.tensor(examples[start : start + 2048], dtype=torch.long))
        if isinstance(batch, torch.Tensor):
            digest.update(f"{tuple(batch.shape)}{batch.dtype}".encode())
            hash_tensors(digest, {"": batch})
        else:
            for key in item_keys(list(batch)):
                digest.update(key)
    return digest.hexdigest()
