"""Which model ``fewshot fit`` uses when none is given: the best of our own measured results at the support set's
shot count, with the figure it rests on.

The figures are copied from the committed results (``tests/test_defaults.py`` checks they still equal them):

* images — the shipped ``zoo/`` checkpoints, 600 fixed Omniglot 5-way test episodes each (``results/omniglot.json``,
  the table in ``results/omniglot.md``; a checkpoint for 20-way tasks is scored 5-way for this);
* text — all-MiniLM-L6-v2 methods on CLINC150, BANKING77 and HWU64 (``results/text.md``): 5-way 1-shot and 5-shot
  (600 fixed test episodes), and all classes with 10 examples each (official test sets, 5 draws). A method is ranked
  by its mean over the three data sets; only methods measured on all three count.

Shot buckets: fewer than 3 examples per class (the smallest class counts) reads the 1-shot figures, 3 to 7 the 5-shot
figures, 8 or more the 10-shot figures (images: the 5-shot ones, the most measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fewshot.errors import FewShotError

IMAGE_SOURCE = "results/omniglot.json"
TEXT_SOURCE = "results/text.md"

IMAGE_FIGURES: dict[tuple[str, int], tuple[float, float]] = {
    # (zoo checkpoint, shots): (accuracy %, 95% CI) on 600 Omniglot 5-way <shots>-shot test episodes
    ("omniglot_5w1s_protonet", 1): (97.13, 0.31), ("omniglot_5w1s_maml", 1): (96.14, 0.37),
    ("omniglot_5w1s_reptile", 1): (78.93, 0.78), ("omniglot_5w1s_anil", 1): (95.16, 0.42),
    ("omniglot_5w1s_metaoptnet", 1): (97.21, 0.30), ("omniglot_5w1s_baseline_conv4", 1): (88.82, 0.64),
    ("omniglot_5w1s_reptile_shared", 1): (91.25, 0.53), ("omniglot_5w1s_fomaml", 1): (98.30, 0.23),
    ("omniglot_5w1s_mamlpp", 1): (98.33, 0.23),
    ("omniglot_20w1s_protonet", 1): (98.43, 0.23), ("omniglot_20w1s_protonet_trainval", 1): (98.50, 0.23),
    ("omniglot_5w5s_protonet", 5): (98.31, 0.18), ("omniglot_5w5s_maml", 5): (99.35, 0.09),
    ("omniglot_5w5s_anil", 5): (93.68, 0.39), ("omniglot_5w5s_metaoptnet", 5): (98.87, 0.14),
    ("omniglot_5w5s_baseline_conv4", 5): (96.78, 0.24), ("omniglot_20w5s_protonet", 5): (99.56, 0.10),
}
"""``results/omniglot.json``: ``accuracy`` and ``ci95`` (as %, 2 decimals) of each zoo checkpoint's 5-way row
(``zoo/<name>.safetensors``; a 20-way checkpoint's row scored with ``eval.way=5``)."""
ZOO_METHODS = {"baseline_conv4": "features", "reptile_shared": "reptile", "protonet_trainval": "protonet",
               "fomaml": "maml", "mamlpp": "maml"}
"""The method of a zoo model whose name is not its method's (the Baseline: supervised Conv-4 + logistic regression;
Reptile with the paper code's shared Adam state; ProtoNet meta-trained on the train + validation characters;
first-order MAML; MAML++, MAML with its options on)."""


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


def _choose_images(shots: int, way: int, method: str | None) -> Choice:
    from fewshot import registry

    cell = bucket(shots, (1, 5))
    candidates = {name: fig for (name, s), fig in IMAGE_FIGURES.items() if s == cell}
    if method is not None:
        models = sorted({zoo_model(name) for name in candidates})
        candidates = {name: fig for name, fig in candidates.items() if zoo_model(name) == method}
        if not candidates:
            raise FewShotError(f"no zoo image model for method {method!r} at {cell} shot(s); there are "
                               f"{', '.join(models)}")
    elif way != 5:  # a model with a fixed 5-way output layer that cannot build another cannot take other classes
        methods = {name: registry.METHODS[ZOO_METHODS.get(zoo_model(name), zoo_model(name))].builder()
                   for name in candidates}
        candidates = {name: fig for name, fig in candidates.items()
                      if not (methods[name].needs_head and not methods[name].builds_head)}
    best = max(candidates, key=lambda name: candidates[name][0])
    ranked = "" if method else f", the best zoo checkpoint at {cell} shot{'s' if cell > 1 else ''}"
    return _image_choice(best, cell, ranked)


def _image_choice(name: str, cell: int, ranked: str = "") -> Choice:
    accuracy, ci = IMAGE_FIGURES[(name, cell)]
    path = zoo_dir() / f"{name}.safetensors"
    scored = ", scored 5-way" if not name.startswith("omniglot_5w") else ""
    reason = (f"{path.name} ({zoo_model(name)}{scored}){ranked}: {accuracy:.2f} ± {ci:.2f}% on Omniglot 5-way "
              f"{cell}-shot, 600 test episodes ({IMAGE_SOURCE})")
    return Choice(str(path), zoo_model(name), cell, accuracy, IMAGE_SOURCE, reason)


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


def figure_for(model: str, modality: str, shots: int, way: int) -> Choice | None:
    """The measured figure of a model given by name (a zoo checkpoint such as ``omniglot_5w<K>s_<method>``, or a
    recipe / zoo prompt of a text method at the support set's shot bucket), or ``None`` when our tables have none."""
    name = Path(model).name.removesuffix(".safetensors")
    if modality == "images":
        return next((_image_choice(name, cell) for (zoo, cell) in IMAGE_FIGURES if zoo == name), None)
    cell = bucket(shots, (1, 5, 10))
    for (method, s) in TEXT_FIGURES:
        if s == cell:
            choice = _choose_text(shots, method)
            if Path(choice.model).name.removesuffix(".safetensors") == name:
                return choice
    return None
