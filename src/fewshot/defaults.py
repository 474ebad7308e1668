"""Which model ``fewshot fit`` uses when none is given: the best of our own measured results at the support set's
shot count and number of classes, with the figure it rests on.

The figures are copied from the committed results (``tests/test_defaults.py`` checks they still equal them):

* images — the shipped ``zoo/`` checkpoints on fixed Omniglot test episodes: 5-way (600 episodes,
  ``results/omniglot.json``, the table in ``results/omniglot.md``; a checkpoint for 20-way tasks is scored 5-way for
  this) and 20-way (the 20-way checkpoints' own rows there; the 5-way checkpoints measured on 20-way episodes in
  ``results/any_way.json``, 300 or 100 episodes, with the head a task of more classes starts from);
* text — all-MiniLM-L6-v2 methods on CLINC150, BANKING77 and HWU64 (``results/text.md``): 5-way 1-shot and 5-shot
  (600 fixed test episodes), and all classes with 10 examples each (official test sets, 5 draws). A method is ranked
  by its mean over the three data sets; only methods measured on all three count.

Shot buckets: fewer than 3 examples per class (the smallest class counts) reads the 1-shot figures, 3 to 7 the 5-shot
figures, 8 or more the 10-shot figures (images: the 5-shot ones, the most measured). Images are ranked by the figures
at the fewest measured number of classes that is at least the support set's, or at the most measured beyond them (up
to 5 classes: the 5-way figures; 6 or more: the 20-way ones), because a model meta-trained on 5 classes loses much
more on 20-way tasks than one of prototypes does (``results/omniglot.md``, "5-way models on 20-way episodes"). A
model without a figure at that number of classes is not a candidate; asked for by ``--method``, it gets its 5-way
figure, which then says it was not measured with so many classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fewshot.errors import FewShotError

IMAGE_SOURCE = "results/omniglot.json"
ANY_WAY_SOURCE = "results/any_way.json"
TEXT_SOURCE = "results/text.md"


class Figure(NamedTuple):
    """A measured accuracy (%) with its 95% CI (%), how many test episodes it rests on and the results file."""

    accuracy: float
    ci95: float
    episodes: int
    source: str


IMAGE_WAYS = (5, 20)
"""The numbers of classes the image figures are measured at."""
IMAGE_FIGURES: dict[tuple[str, int, int], Figure] = {
    # (zoo checkpoint, way, shots): its figure on Omniglot <way>-way <shots>-shot test episodes
    ("omniglot_5w1s_protonet", 5, 1): Figure(97.13, 0.31, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_maml", 5, 1): Figure(98.35, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_reptile", 5, 1): Figure(97.39, 0.28, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_anil", 5, 1): Figure(95.16, 0.42, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_metaoptnet", 5, 1): Figure(97.21, 0.30, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_baseline_conv4", 5, 1): Figure(88.82, 0.64, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_reptile_shared", 5, 1): Figure(91.25, 0.53, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_fomaml", 5, 1): Figure(98.30, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_mamlpp", 5, 1): Figure(98.33, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_metasgd", 5, 1): Figure(98.74, 0.19, 600, IMAGE_SOURCE),
    ("omniglot_20w1s_protonet", 5, 1): Figure(98.43, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_20w1s_protonet_trainval", 5, 1): Figure(98.50, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_protonet", 5, 5): Figure(98.31, 0.18, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_maml", 5, 5): Figure(99.50, 0.08, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_anil", 5, 5): Figure(93.68, 0.39, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_metaoptnet", 5, 5): Figure(98.87, 0.14, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_baseline_conv4", 5, 5): Figure(96.78, 0.24, 600, IMAGE_SOURCE),
    ("omniglot_5w5s_fomaml", 5, 5): Figure(98.95, 0.12, 600, IMAGE_SOURCE),
    ("omniglot_20w5s_protonet", 5, 5): Figure(99.56, 0.10, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_reptile", 5, 5): Figure(99.39, 0.09, 600, IMAGE_SOURCE),
    ("omniglot_20w1s_protonet", 20, 1): Figure(94.56, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_20w1s_protonet_trainval", 20, 1): Figure(94.89, 0.23, 600, IMAGE_SOURCE),
    ("omniglot_20w5s_protonet", 20, 5): Figure(98.48, 0.08, 600, IMAGE_SOURCE),
    ("omniglot_5w1s_maml", 20, 1): Figure(65.62, 0.68, 300, ANY_WAY_SOURCE),
    ("omniglot_5w1s_maml", 20, 5): Figure(86.89, 0.59, 100, ANY_WAY_SOURCE),
    ("omniglot_5w5s_maml", 20, 1): Figure(70.51, 0.63, 300, ANY_WAY_SOURCE),
    ("omniglot_5w5s_maml", 20, 5): Figure(91.16, 0.49, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_fomaml", 20, 1): Figure(68.07, 1.28, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_fomaml", 20, 5): Figure(86.05, 0.64, 100, ANY_WAY_SOURCE),
    ("omniglot_5w5s_fomaml", 20, 1): Figure(67.56, 1.06, 100, ANY_WAY_SOURCE),
    ("omniglot_5w5s_fomaml", 20, 5): Figure(86.75, 0.64, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_mamlpp", 20, 1): Figure(15.86, 1.09, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_mamlpp", 20, 5): Figure(17.91, 1.15, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_metasgd", 20, 1): Figure(74.01, 1.08, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_metasgd", 20, 5): Figure(88.69, 0.55, 100, ANY_WAY_SOURCE),
    ("omniglot_5w1s_reptile", 20, 1): Figure(71.26, 0.60, 300, ANY_WAY_SOURCE),
    ("omniglot_5w1s_reptile", 20, 5): Figure(86.73, 0.40, 300, ANY_WAY_SOURCE),
    ("omniglot_5w1s_anil", 20, 1): Figure(84.76, 0.54, 300, ANY_WAY_SOURCE),
    ("omniglot_5w1s_anil", 20, 5): Figure(94.54, 0.24, 300, ANY_WAY_SOURCE),
    ("omniglot_5w5s_anil", 20, 1): Figure(65.15, 0.74, 300, ANY_WAY_SOURCE),
    ("omniglot_5w5s_anil", 20, 5): Figure(81.35, 0.50, 300, ANY_WAY_SOURCE),
}
"""``results/omniglot.json``: ``accuracy`` and ``ci95`` (as %, 2 decimals) of each zoo checkpoint's rows
(``zoo/<name>.safetensors``; a 20-way checkpoint's 5-way row scored with ``eval.way=5``); ``results/any_way.json``:
the 20-way rows of 5-way checkpoints whose head starts as a task of more classes starts by default (prototypes)."""
ZOO_METHODS = {"baseline_conv4": "features", "reptile_shared": "reptile", "protonet_trainval": "protonet",
               "fomaml": "maml", "mamlpp": "maml", "metasgd": "maml"}
"""The method of a zoo model whose name is not its method's (the Baseline: supervised Conv-4 + logistic regression;
Reptile with the paper code's shared Adam state; ProtoNet meta-trained on the train + validation characters;
first-order MAML; MAML++ and Meta-SGD, MAML with their options on)."""


def zoo_model(name: str) -> str:
    """The model part of a zoo checkpoint's name, which ``--method`` picks: ``omniglot_20w1s_protonet`` →
    ``protonet``."""
    return name.split("_", 2)[2]


TEXT_DATASETS = ("CLINC150", "BANKING77", "HWU64")
TEXT_FIGURES: dict[tuple[str, int], tuple[float, float, float]] = {
    # (recipe suffix, shots): accuracy % on CLINC150, BANKING77, HWU64
    ("features", 1): (94.92, 84.98, 84.45), ("ncm", 1): (94.89, 84.82, 83.50), ("finetune", 1): (94.71, 84.09, 83.70),
    ("setfit", 1): (95.00, 84.95, 84.37), ("prompt_random", 1): (94.95, 83.18, 81.78),
    ("prompt", 1): (94.96, 86.31, 82.59),
    ("features", 5): (99.02, 94.66, 95.23), ("ncm", 5): (98.91, 94.28, 93.90), ("finetune", 5): (99.18, 94.38, 95.74),
    ("prompt_random", 5): (98.94, 94.43, 94.22), ("prompt", 5): (99.03, 95.13, 94.15),
    ("features", 10): (88.74, 81.84, 81.26), ("ncm", 10): (88.78, 81.23, 80.11),
    ("finetune", 10): (91.75, 83.56, 84.28),
}
"""``results/text.md``: "Episodic 5-way" table (1 and 5 shots) and "All classes, 10 examples each" (10 shots)."""

TRAINED_TEXT = ("prompt",)
"""Text methods whose figures come from a trained checkpoint (``zoo/text/``), not a recipe needing no training."""

TEXT_TABLES = {1: "5-way 1-shot, 600 test episodes", 5: "5-way 5-shot, 600 test episodes",
               10: "all classes, 10 examples each, official test sets"}


@dataclass(frozen=True)
class Choice:
    """A default model and why."""

    model: str
    """What :func:`fewshot.classify.load_model` reads: a zoo checkpoint path or a recipe name."""
    method: str
    shots: int
    """The measured shot count whose figures were read (1, 5 or 10)."""
    accuracy: float
    """The figure the choice rests on (%): the checkpoint's, or the method's mean over the text data sets."""
    source: str
    reason: str
    """One line: what was chosen, the figure and where it comes from."""
    way: int | None = None
    """Images: the number of classes of the episodes the figure was measured on (5 or 20)."""


def zoo_dir() -> Path:
    """The ``zoo/`` folder of shipped checkpoints (``$FEWSHOT_ZOO``, else the one beside the source tree)."""
    import os

    return Path(os.environ.get("FEWSHOT_ZOO") or Path(__file__).resolve().parents[2] / "zoo")


def bucket(shots: int, measured: tuple[int, ...]) -> int:
    """The measured shot count whose figures apply to a support set with ``shots`` examples in its smallest class."""
    want = 1 if shots < 3 else 5 if shots < 8 else 10
    return max(s for s in measured if s <= want)


def choose(modality: str, shots: int, way: int, method: str | None = None) -> Choice:
    """The default model for a ``way``-class support set whose smallest class has ``shots`` examples (``method``:
    the best of that method only)."""
    if modality == "images":
        return _choose_images(shots, way, method)
    if modality == "text":
        return _choose_text(shots, method)
    raise FewShotError(f"no default model for {modality!r} inputs")


def measured_way(way: int) -> int:
    """The number of classes whose image figures rank models for a ``way``-class support set: the fewest measured
    that is at least ``way`` (the most measured beyond them)."""
    return next((w for w in IMAGE_WAYS if w >= way), IMAGE_WAYS[-1])


def zoo_cell(name: str) -> tuple[int, int]:
    """The number of classes and shots a zoo checkpoint was meta-trained on: ``omniglot_20w1s_protonet`` → (20, 1)."""
    way, shots = name.split("_")[1].removesuffix("s").split("w")
    return int(way), int(shots)


def zoo_way(name: str) -> int:
    """The number of classes a zoo checkpoint was meta-trained on: ``omniglot_20w1s_protonet`` → 20."""
    return zoo_cell(name)[0]


def _choose_images(shots: int, way: int, method: str | None) -> Choice:
    from fewshot import registry

    cell, at = bucket(shots, (1, 5)), measured_way(way)
    keys = {key[0]: key for key in IMAGE_FIGURES if key[1:] == (at, cell)}
    if method is not None:
        keys = {name: key for name, key in keys.items() if zoo_model(name) == method}
        if not keys:  # measured on 5-way tasks only: its 5-way figure, which says so
            keys = {key[0]: key for key in IMAGE_FIGURES if key[1:] == (IMAGE_WAYS[0], cell)
                    and zoo_model(key[0]) == method}
        if not keys:
            models = sorted({zoo_model(name) for (name, w, s) in IMAGE_FIGURES
                             if s == cell and w in (at, IMAGE_WAYS[0])})
            raise FewShotError(f"no zoo image model for method {method!r} measured at {cell} shot"
                               f"{'s' if cell > 1 else ''} with {way} classes; there are {', '.join(models)} "
                               f"(or give a checkpoint with --model)")
    # a model with a fixed output layer that cannot build another takes only the classes it was trained on
    def takes(name: str) -> bool:
        if way == zoo_way(name):
            return True
        method = registry.METHODS[ZOO_METHODS.get(zoo_model(name), zoo_model(name))].builder()
        return method.builds_head or not method.needs_head

    keys = {name: key for name, key in keys.items() if takes(name)}
    if not keys:
        raise FewShotError(f"no zoo image model{f' for method {method!r}' if method else ''} takes {way} classes")
    best = max(keys, key=lambda name: IMAGE_FIGURES[keys[name]].accuracy)
    ranked = "" if method else f", the best zoo checkpoint at {cell} shot{'s' if cell > 1 else ''}"
    return _image_choice(best, keys[best], way, ranked)


def _image_choice(name: str, key: tuple[str, int, int], way: int, ranked: str = "") -> Choice:
    """The choice of zoo checkpoint ``name`` by its figure ``IMAGE_FIGURES[key]``, for a ``way``-class support set."""
    _, at, cell = key
    figure = IMAGE_FIGURES[key]
    path = zoo_dir() / f"{name}.safetensors"
    scored = f", scored {at}-way" if at != zoo_way(name) else ""
    unmeasured = (f"; not measured with more than {at} classes (this support set has {way})" if way > at else "")
    reason = (f"{path.name} ({zoo_model(name)}{scored}){ranked}: {figure.accuracy:.2f} ± {figure.ci95:.2f}% on "
              f"Omniglot {at}-way {cell}-shot, {figure.episodes} test episodes ({figure.source}){unmeasured}")
    return Choice(str(path), zoo_model(name), cell, figure.accuracy, figure.source, reason, at)


def _choose_text(shots: int, method: str | None) -> Choice:
    cell = bucket(shots, (1, 5, 10))
    candidates = {m: sum(fig) / len(fig) for (m, s), fig in TEXT_FIGURES.items() if s == cell}
    if method is not None:
        if method not in candidates:
            raise FewShotError(f"no measured MiniLM method {method!r} at {cell} shot(s); there are "
                               f"{', '.join(sorted(candidates))}")
        candidates = {method: candidates[method]}
    best = max(candidates, key=lambda m: candidates[m])
    figures = TEXT_FIGURES[(best, cell)]
    if best in TRAINED_TEXT:  # a meta-learned start: a trained checkpoint shipped in zoo/text
        model = str(zoo_dir() / "text" / f"clinc150_5w{cell}s_{best}_minilm.safetensors")
    elif cell == 10:
        model = f"clinc150_10s_all_{best}_minilm"
    else:
        model = f"clinc150_5w{cell}s_{best}_minilm"
    listed = ", ".join(f"{name} {value:.2f}" for name, value in zip(TEXT_DATASETS, figures, strict=True))
    ranked = "" if method else ", the best MiniLM method"
    reason = (f"{model} ({best}){ranked} at {TEXT_TABLES[cell]}: mean {candidates[best]:.2f}% ({listed}; "
              f"{TEXT_SOURCE})")
    return Choice(model, best, cell, candidates[best], TEXT_SOURCE, reason)


def measured_as(overrides: Sequence[str]) -> str:
    """What a cited figure adds when the user changes the model's config: it was measured without those changes."""
    return f" (measured with the model's own settings, not with --set {' '.join(overrides)})" if overrides else ""


def model_note(model: str, modality: str, shots: int, way: int,
               overrides: Sequence[str] = ()) -> tuple[Choice, str] | None:
    """:func:`figure_for`, and the line ``fit`` and ``classify`` print for it (``model: <figure>``, plus
    :func:`measured_as`); ``None`` when our tables have no figure for ``model``."""
    choice = figure_for(model, modality, shots, way)
    return None if choice is None else (choice, f"model: {choice.reason}{measured_as(overrides)}")


def figure_for(model: str, modality: str, shots: int, way: int) -> Choice | None:
    """The measured figure of a model given by name (a checkpoint in :func:`zoo_dir` such as
    ``zoo/omniglot_5w<K>s_<method>.safetensors``, or a recipe / zoo prompt of a text method at the support set's shot
    bucket), or ``None`` when our tables have none.
    Images: the figure at :func:`measured_way` of ``way`` (else its 5-way one), at the shot bucket if measured there
    (else the checkpoint's own shot count)."""
    name = Path(model).name.removesuffix(".safetensors")
    if modality == "images":
        path = Path(model)
        if path.suffix != ".safetensors" or path.resolve().parent != zoo_dir().resolve():
            return None  # only the shipped checkpoints are measured; a run folder of the same name is the user's own
        cell = bucket(shots, (1, 5))
        keys = [key for key in IMAGE_FIGURES if key[0] == name]
        for at in dict.fromkeys((measured_way(way), IMAGE_WAYS[0])):
            here = [key for key in keys if key[1] == at]
            if here:
                key = next((k for k in here if k[2] == cell), None) or min(here, key=lambda k: abs(k[2] - cell))
                return _image_choice(name, key, way)
        return None
    cell = bucket(shots, (1, 5, 10))
    for (method, s) in TEXT_FIGURES:
        if s == cell:
            choice = _choose_text(shots, method)
            if Path(choice.model).name.removesuffix(".safetensors") == name:
                return choice
    return None
