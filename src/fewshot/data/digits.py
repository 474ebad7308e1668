"""MNIST -> USPS digits (the JDA benchmark version, Long et al. 2013): 2,000 MNIST and 1,800 USPS images, 16x16.

Read from ``<root>/domain_adaptation/mnist_usps_jda/mnist_usps_jda.npz`` (a lossless re-save of ``MNIST_vs_USPS.mat``
from github.com/chamwen/JPDA; see the README next to it). Labels in the file are 1..10 (digit + 1); here they are
the digits 0..9. Images are float32 in [0, 1], upright, white digits on black.

For domain adaptation the USPS images are split once, stratified and with a fixed seed (independent of the run
seed), into a target *train* half (unlabelled for DANN; labelled for the oracle and the few-shot variant) and a
target *test* half on which every method is scored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewshot.data.base import ImageInput, LabelledTensorDataset
from fewshot.data.download import data_root
from fewshot.errors import FewShotError

FILE = Path("domain_adaptation") / "mnist_usps_jda" / "mnist_usps_jda.npz"
SHA256 = "6e8ad2b64cfe32f4f56678d686de4862069f716b756bc57d6e1be6c178187fa3"
DOMAINS = ("mnist", "usps")
SIZE = 16
"""Side of the images, in pixels."""
SPLITS = ("all", "train", "test")


class LabelledImages(LabelledTensorDataset):
    """Images ``[N, H, W]`` with labels ``[N]``, also usable as a class data set (episodes) via ``gather``."""

    def subset(self, index: torch.Tensor) -> LabelledImages:
        return LabelledImages(self.images[index], self.labels[index], self.class_names)


def _file(root: str | os.PathLike | None) -> Path:
    base = data_root(root)
    for path in (base / FILE, base / FILE.name):
        if path.exists():
            return path
    raise FewShotError(f"MNIST/USPS file {base / FILE} is missing (set --data-root or FEWSHOT_DATA to the folder "
                       "holding domain_adaptation/mnist_usps_jda/)")


def load_domain(domain: str, root: str | os.PathLike | None = None) -> LabelledImages:
    """All images of ``domain`` (``mnist``: 2,000; ``usps``: 1,800), 16x16 float32 in [0, 1], digits 0..9."""
    if domain not in DOMAINS:
        raise FewShotError(f"unknown digits domain {domain!r}; choose one of {DOMAINS}")
    path = _file(root)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256:
        raise FewShotError(f"{path} has sha256 {digest}, expected {SHA256} (see the README next to it)")
    with np.load(path, allow_pickle=False) as data:
        x, y = data[f"{domain}_X"], data[f"{domain}_y"]
    if x.ndim != 2 or x.shape[1] != 256 or set(np.unique(y)) != set(range(1, 11)):
        raise FewShotError(f"{path}: unexpected {domain} arrays {x.shape}, labels {sorted(set(np.unique(y)))}")
    images = torch.from_numpy(x.astype(np.float32)).view(-1, 16, 16)
    labels = torch.from_numpy(y.astype(np.int64) - 1)  # file labels are digit + 1
    return LabelledImages(images, labels, [str(d) for d in range(10)])


def stratified_halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified split of indices into two halves (per class: first half shuffled -> train)."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        half = len(members) // 2
        train.append(members[:half])
        test.append(members[half:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def digits(domain: str, split: str = "all", root: str | os.PathLike | None = None,
           split_seed: int = 0) -> LabelledImages:
    """One domain, all of it or the ``train`` / ``test`` half of its fixed stratified split."""
    if split not in SPLITS:
        raise FewShotError(f"unknown digits split {split!r}; choose one of {SPLITS}")
    data = load_domain(domain, root)
    if split == "all":
        return data
    train, test = stratified_halves(data.labels, split_seed)
    return data.subset(train if split == "train" else test)


@dataclass
class DigitsConfig:
    source: str = "mnist"
    target: str = "usps"
    split_seed: int = 0
    """Seed of the fixed target train/test split (the same for every run seed)."""

    def __post_init__(self) -> None:
        for name in (self.source, self.target):
            if name not in DOMAINS:
                raise FewShotError(f"unknown digits domain {name!r}; choose one of {DOMAINS}")
        if self.source == self.target:
            raise FewShotError("data.source and data.target must differ")

    def image_input(self) -> ImageInput:
        return ImageInput(SIZE, channels=1, squeeze=True, bright_on_dark=True)


def build(split: str, root: str | None, options: DigitsConfig) -> LabelledImages:
    """Registry builder: ``source`` (all source images), ``target_train``, ``target_test``; ``train`` = source,
    ``val`` / ``test`` = the target's train / test half (episodes over target classes)."""
    aliases = {"train": "source", "val": "target_train", "test": "target_test"}
    split = aliases.get(split, split)
    if split == "source":
        return digits(options.source, "all", root)
    if split in ("target_train", "target_test"):
        return digits(options.target, split.removeprefix("target_"), root, options.split_seed)
    raise FewShotError(f"unknown digits split {split!r}; choose source, target_train, target_test (or train/val/test)")
