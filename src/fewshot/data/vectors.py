"""Feature vectors as a class data set: one example = one row of numbers, with a class label.

Readable files (``format: auto`` picks by the name):

* ``.npz`` — two arrays, features ``[N, D]`` named ``features_key`` (default ``X``) and labels ``[N]`` named
  ``labels_key`` (default ``y``): ``np.savez("mine_train.npz", X=X, y=y)``;
* a folder of ``.npy`` files — ``<features_key>.npy`` and ``<labels_key>.npy`` in it (``mine/train/X.npy``,
  ``mine/train/y.npy``);
* ``.csv`` / ``.tsv`` — a header row, a label column (``label_column``, default ``label``) and every other column a
  number;
* ``.mat`` (MATLAB v5/v7, read with ``scipy.io.loadmat``) — two variables named by ``features_key`` / ``labels_key``
  (Office-Caltech10 SURF: ``fts`` and ``labels``). MATLAB v7.3 files are HDF5: convert them (see the error).

Labels are integers or words; the classes are the distinct labels, sorted (numerically when all are integers), and
their names are the labels as text. Features become float32; ``normalize`` may scale each example to unit L1 or L2
norm (per example, so nothing leaks between splits or domains).

Which file a split reads: ``path`` with ``{split}`` in it (``mine_{split}.npz``: ``train``, ``val``, ``test`` for the
episodic and supervised kinds; ``source``, ``target_train``, ``target_test`` for domain adaptation), or ``files``, a
mapping from split name to file. Without ``{split}`` every split reads the same file (fine for a quick look, not for
honest evaluation). For domain adaptation a ``target`` file (``files: {source: ..., target: ...}``, or
``mine_target.npz``) that has no ``target_train`` / ``target_test`` file of its own is cut once into a stratified train
half and test half (fixed by ``split_seed``, independent of the run seed), as ``mnist_usps`` does; the target must have
the source's classes.

Refused, in one line naming the file (and the CSV line and column): a row with more or fewer fields than the header,
a cell that is not a number, NaN or infinity, a missing label column or array, labels that are neither integers nor
words, features that are not ``[examples, numbers]``, fewer labels than rows, fewer than two classes, and a class
with fewer than ``min_per_class`` examples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot.data.base import LabelledTensorDataset
from fewshot.errors import FewShotError

FORMATS = ("auto", "npz", "npy", "csv", "mat")
NORMALIZE = ("none", "l1", "l2")
DOMAIN_SPLITS = ("source", "target_train", "target_test")


class VectorDataset(LabelledTensorDataset):
    """Features ``[N, D]`` (float32, in ``images`` as the data layer's other labelled tensors) with labels ``[N]``
    indexing ``class_names``; episodes gather ``[batch, D]``."""

    @property
    def feature_dim(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor) -> VectorDataset:
        return VectorDataset(self.images[index], self.labels[index], self.class_names)


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "npy"
    suffix = path.suffix.lower()
    known = {".npz": "npz", ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".mat": "mat", ".npy": "npy"}
    if suffix not in known:
        raise FewShotError(f"{path}: cannot tell the format from the name; use .npz, .csv, .tsv, .mat or a folder of "
                           f".npy files, or set data.options.format to one of {FORMATS[1:]}")
    return known[suffix]


def _missing(path: Path, what: str) -> FewShotError:
    return FewShotError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")


def _named(arrays: dict[str, Any], key: str, path: Path, role: str, option: str) -> np.ndarray:
    if key not in arrays:
        names = ", ".join(repr(k) for k in arrays) or "none"
        raise FewShotError(f"{path} has no {role} array {key!r} (it has {names}); set data.options.{option}")
    return arrays[key]


def _read_npz(path: Path, features_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise _missing(path, ".npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise FewShotError(f"{path} holds Python objects (pickled); save plain numeric arrays (labels as "
                               "integers or a str array)") from exc
        raise FewShotError(f"{path} is not a readable .npz file: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise FewShotError(f"{path} is not a readable .npz file: {exc}") from exc
    return (_named(arrays, features_key, path, "features", "features_key"),
            _named(arrays, labels_key, path, "labels", "labels_key"))


def _read_npy_folder(path: Path, features_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    if path.is_file():
        raise FewShotError(f"{path} is one array; point data.options.path at the folder holding {features_key}.npy "
                           f"and {labels_key}.npy, or save both into one .npz (np.savez(file, X=X, y=y))")
    if not path.is_dir():
        raise FewShotError(f"folder {path} does not exist")
    out = []
    for key in (features_key, labels_key):
        file = path / f"{key}.npy"
        if not file.is_file():
            raise FewShotError(f"{path} has no {file.name} (features_key={features_key!r}, labels_key="
                               f"{labels_key!r})")
        try:
            out.append(np.load(file, allow_pickle=False))
        except ValueError as exc:
            raise FewShotError(f"{file} is not a plain numeric .npy array: {exc}") from exc
        except (OSError, EOFError) as exc:
            raise FewShotError(f"{file} is not a readable .npy file: {exc}") from exc
    return out[0], out[1]


def _read_mat(path: Path, features_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise _missing(path, ".mat file")
    try:
        import scipy.io
        import scipy.sparse
    except ImportError as exc:  # pragma: no cover - scipy comes with scikit-learn
        raise FewShotError("reading .mat files needs scipy (pip install scipy)") from exc
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # v7.3 = HDF5
        raise FewShotError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; convert it once with h5py: python -c "
            f"\"import h5py, numpy as np; f = h5py.File('{path}'); np.savez('{path.with_suffix('.npz')}', "
            f"X=np.array(f['{features_key}']).T, y=np.array(f['{labels_key}']).ravel())\"") from exc
    except (ValueError, OSError, TypeError) as exc:
        raise FewShotError(f"{path} is not a readable .mat file: {exc}") from exc
    arrays = {k: v for k, v in data.items() if not k.startswith("__")}
    features = _named(arrays, features_key, path, "features", "features_key")
    labels = _named(arrays, labels_key, path, "labels", "labels_key")
    if scipy.sparse.issparse(features):
        features = features.toarray()
    if scipy.sparse.issparse(labels):
        labels = labels.toarray()
    return np.asarray(features), np.asarray(labels)


def _read_csv(path: Path, label_column: str, delimiter: str | None) -> tuple[np.ndarray, np.ndarray]:
    from fewshot.data.csv_text import find_column, read_csv

    header, rows = read_csv(path, delimiter)
    at = find_column(path, header, label_column, "label", hint=" (set data.options.label_column)")
    columns = [i for i in range(len(header)) if i != at]
    if not columns:
        raise FewShotError(f"{path} has only the label column {label_column!r}: no feature columns")
    if not rows:
        raise FewShotError(f"{path} has a header but no rows")
    features = np.empty((len(rows), len(columns)), dtype=np.float64)
    labels = []
    for r, row in enumerate(rows):
        label = row.fields[at].strip()
        if not label:
            raise FewShotError(f"{path}: line {row.line} has an empty label {label_column!r}; give every row its class")
        labels.append(label)
        for j, c in enumerate(columns):
            cell = row.fields[c].strip()
            try:
                value = float(cell)
            except ValueError:
                what = "is empty" if not cell else f"is {cell[:40]!r}, not a number"
                raise FewShotError(f"{path}: line {row.line}, column {header[c]!r} {what}") from None
            if not math.isfinite(value):
                raise FewShotError(f"{path}: line {row.line}, column {header[c]!r} is {cell!r}; features must be "
                                   "finite numbers (drop or fill the row)")
            features[r, j] = value
    return features, np.asarray(labels, dtype=str)


def read_vectors(path: str | os.PathLike, fmt: str = "auto", features_key: str = "X", labels_key: str = "y",
                 label_column: str = "label", delimiter: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The raw features ``[N, D]`` (float64, checked finite) and labels ``[N]`` (integers or text) of one file."""
    path = Path(path)
    kind = _format(path, fmt)
    if kind == "csv":
        if not path.is_file():
            raise _missing(path, "CSV file")
        features, labels = _read_csv(path, label_column, delimiter)
    else:
        read = {"npz": _read_npz, "npy": _read_npy_folder, "mat": _read_mat}[kind]
        features, labels = read(path, features_key, labels_key)
        features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2:
        raise FewShotError(f"{path}: the features must be a 2-d array [examples, numbers], got shape "
                           f"{features.shape}")
    if features.dtype.kind not in "biuf":
        raise FewShotError(f"{path}: the features must be numbers, got dtype {features.dtype}")
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.ravel()  # MATLAB's [N, 1] or [1, N]
    if labels.ndim != 1:
        raise FewShotError(f"{path}: the labels must be a 1-d array, got shape {labels.shape}")
    if labels.shape[0] != features.shape[0]:
        raise FewShotError(f"{path}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise FewShotError(f"{path} has no examples (features of shape {features.shape})")
    features = features.astype(np.float64, copy=False)
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise FewShotError(f"{path}: {int(bad.sum())} feature value(s) are NaN or infinite (first: example {row + 1}, "
                           f"column {col + 1}: {features[row, col]}); drop or fill them")
    return features, _label_names(path, labels)


def _label_names(path: Path, labels: np.ndarray) -> np.ndarray:
    """Labels as text: integers (or integral floats) as their decimal digits, words trimmed."""
    kind = labels.dtype.kind
    if kind in "biu":
        return labels.astype(np.int64).astype(str)
    if kind == "f":
        finite = np.isfinite(labels)
        if not finite.all() or not np.all(labels == np.round(labels)):
            at = int(np.flatnonzero(~finite | (labels != np.round(np.where(finite, labels, 0))))[0])
            raise FewShotError(f"{path}: label {at + 1} is {labels[at]}; labels must be integers or words")
        return labels.astype(np.int64).astype(str)
    if kind in "US":
        names = np.char.strip(labels.astype(str))
        empty = np.flatnonzero(names == "")
        if len(empty):
            raise FewShotError(f"{path}: label {int(empty[0]) + 1} is empty; give every example its class")
        return names
    raise FewShotError(f"{path}: labels must be integers or words, got dtype {labels.dtype}")


def sorted_classes(names: Any) -> list[str]:
    """Distinct labels sorted: numerically when all are integers, else as text."""
    distinct = sorted(set(str(n) for n in names))
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return distinct


def normalized(features: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return features
    norm = np.abs(features).sum(1, keepdims=True) if how == "l1" else np.sqrt((features**2).sum(1, keepdims=True))
    return features / np.maximum(norm, 1e-12)


def load_vectors(path: str | os.PathLike, fmt: str = "auto", features_key: str = "X", labels_key: str = "y",
                 label_column: str = "label", delimiter: str | None = None, normalize: str = "none",
                 min_per_class: int = 1, class_names: list[str] | None = None, min_classes: int = 2) -> VectorDataset:
    """One file as a :class:`VectorDataset` (see the module's docstring). ``class_names``: index the labels by these
    (another split's classes, e.g. the source domain's); the file must have exactly these classes."""
    features, labels = read_vectors(path, fmt, features_key, labels_key, label_column, delimiter)
    names = sorted_classes(labels)
    if class_names is not None:
        if set(names) != set(class_names):
            missing, extra = sorted(set(class_names) - set(names)), sorted(set(names) - set(class_names))
            raise FewShotError(f"{path} must have the same classes as the source domain; "
                               + "; ".join(p for p in (f"it lacks {', '.join(missing[:5])}" if missing else "",
                                                       f"it adds {', '.join(extra[:5])}" if extra else "") if p))
        names = list(class_names)
    if len(names) < min_classes:
        raise FewShotError(f"{path} has {len(names)} class(es) ({', '.join(map(repr, names[:5]))}); a classifier "
                           f"needs at least {min_classes}")
    index = {name: i for i, name in enumerate(names)}
    y = torch.tensor([index[name] for name in labels.tolist()], dtype=torch.long)
    sizes = torch.bincount(y, minlength=len(names)).tolist()
    small = [(name, n) for name, n in zip(names, sizes, strict=True) if n < min_per_class]
    if small:
        listed = ", ".join(f"{name!r} ({n})" for name, n in small[:5])
        raise FewShotError(f"{path}: {len(small)} of {len(names)} classes have fewer than {min_per_class} examples "
                           f"(data.options.min_per_class; shot + query for episodes), e.g. {listed}")
    x = torch.from_numpy(normalized(features, normalize).astype(np.float32))
    return VectorDataset(x, y, names)


@dataclass
class VectorsConfig:
    path: str = ""
    """A file (or a folder of .npy files); ``{split}`` in it is replaced by the split's name. Relative paths are under
    the data root when they exist there, else under the current folder."""
    files: dict[str, str] = field(default_factory=dict)
    """Instead of ``path``: split name -> file (``{train: a.npz, test: b.npz}``; ``{source: ..., target: ...}``)."""
    format: str = "auto"
    """``auto`` (by the name: .npz, .csv/.tsv, .mat, a folder of .npy), or one of npz, npy, csv, mat."""
    features_key: str = "X"
    """Name of the features array in a .npz / .mat file (or file stem in a .npy folder)."""
    labels_key: str = "y"
    """Name of the labels array in a .npz / .mat file (or file stem in a .npy folder)."""
    label_column: str = "label"
    """CSV: the column holding the class; every other column is a feature."""
    delimiter: str = ""
    """CSV: one character; empty: tab for a .tsv file, comma otherwise."""
    normalize: str = "none"
    """Scale each example: ``none``, ``l1`` (entries sum to 1 in absolute value) or ``l2`` (unit length)."""
    min_per_class: int = 1
    """Fail early, naming the classes, if any class has fewer examples (set it to shot + query)."""
    split_seed: int = 0
    """Domain adaptation: seed of the fixed stratified cut of a ``target`` file into target_train / target_test."""

    def __post_init__(self) -> None:
        if bool(self.path) == bool(self.files):
            raise FewShotError("set one of data.options.path (with {split} in it) or data.options.files "
                               "(split name -> file)")
        bad = [k for k, v in self.files.items() if not isinstance(k, str) or not isinstance(v, str) or not v]
        if bad:
            raise FewShotError(f"data.options.files maps split names to file paths; {bad[0]!r} does not")
        if self.format not in FORMATS:
            raise FewShotError(f"data.options.format must be one of {FORMATS}, got {self.format!r}")
        if self.normalize not in NORMALIZE:
            raise FewShotError(f"data.options.normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.min_per_class < 1:
            raise FewShotError(f"data.options.min_per_class must be >= 1, got {self.min_per_class}")
        if len(self.delimiter) > 1:
            raise FewShotError(f"data.options.delimiter must be one character, got {self.delimiter!r}")


def _resolve(name: str, root: str | None) -> Path:
    path = Path(name).expanduser()
    if not path.is_absolute():
        from fewshot.data.download import data_root

        candidate = data_root(root) / path
        path = candidate if candidate.exists() or not path.exists() else path
    return path


def split_file(split: str, root: str | None, options: VectorsConfig) -> Path | None:
    """The file that split ``split`` reads, or ``None`` when ``files`` has no entry for it."""
    if options.files:
        return _resolve(options.files[split], root) if split in options.files else None
    return _resolve(options.path.replace("{split}", split), root)


def _load(path: Path, options: VectorsConfig, class_names: list[str] | None = None,
          min_per_class: int | None = None) -> VectorDataset:
    return load_vectors(path, options.format, options.features_key, options.labels_key, options.label_column,
                        options.delimiter or None, options.normalize,
                        options.min_per_class if min_per_class is None else min_per_class, class_names)


def build(split: str, root: str | None, options: VectorsConfig) -> VectorDataset:
    """Registry builder (see :mod:`fewshot.registry`): split ``split``'s file; for domain adaptation, a target split
    without a file of its own is a fixed stratified half of the ``target`` file, indexed by the source's classes."""
    path = split_file(split, root, options)
    names = None
    if split in ("target", "target_train", "target_test"):
        source = split_file("source", root, options)
        if source is not None and source != path and source.exists():
            names = _load(source, options, min_per_class=1).class_names  # the target indexes the source's classes
        target = split_file("target", root, options)
        if split != "target" and (path is None or not path.exists()) and target is not None and target.exists():
            return _target_half(split, target, options, names)
    if path is None:
        given = ", ".join(sorted(options.files))
        hint = ("; for domain adaptation give source and target (cut into halves) or target_train and target_test"
                if split in DOMAIN_SPLITS else "")
        raise FewShotError(f"data.options.files has no file for split {split!r} (it has {given}){hint}")
    return _load(path, options, names)


def _target_half(split: str, target: Path, options: VectorsConfig, names: list[str] | None) -> VectorDataset:
    from fewshot.data.digits import stratified_halves

    whole = _load(target, options, names, min_per_class=1)
    train, test = stratified_halves(whole.labels, options.split_seed)
    part = whole.subset(train if split == "target_train" else test)
    sizes = part.class_sizes.tolist()
    small = [(n, c) for n, c in zip(part.class_names, sizes, strict=True) if c < options.min_per_class]
    if small:
        raise FewShotError(f"{target}: the {split} half has fewer than {options.min_per_class} examples in "
                           f"{len(small)} class(es), e.g. {small[0][0]!r} ({small[0][1]})")
    return part
