"""Classifiers put on top of features for one task: class means (cosine or squared-distance prototypes), a
prototype-initialised linear layer, and logistic regression. Shared by the methods that need one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError

CLASSIFIERS = ("logreg", "ncm")


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Class means ``[..., way, dim]`` of ``embeddings [..., n, dim]`` by ``labels [..., n]``."""
    onehot = F.one_hot(labels, way).to(embeddings.dtype)
    return (onehot.transpose(-1, -2) @ embeddings) / onehot.sum(-2).unsqueeze(-1)


def squared_distance_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``-||q - p||^2`` for every query and prototype: ``[..., q, dim] x [..., way, dim] -> [..., q, way]``."""
    return -(queries.unsqueeze(-2) - protos.unsqueeze(-3)).pow(2).sum(-1)


def cosine_class_means(z: torch.Tensor, labels: torch.Tensor, way: int, normalized: bool = False) -> torch.Tensor:
    """L2-normalised means ``[way, dim]`` of the L2-normalised features ``z`` of each class (``normalized``: ``z``
    already is); every class needs an example."""
    if not normalized:
        z = F.normalize(z, dim=-1)
    onehot = F.one_hot(labels.to(z.device), way).to(z.dtype)
    counts = onehot.sum(0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise FewShotError(f"every one of the {way} classes needs a support example; classes {missing} have none")
    return F.normalize(onehot.T @ z / counts.unsqueeze(-1), dim=-1)


def cosine_logits(queries: torch.Tensor, means: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature`` times the cosine of each query with each class mean (``[q, way]``)."""
    return temperature * F.normalize(queries, dim=-1) @ means.T


def prototype_head(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, way: int) -> None:
    """Set ``head`` to the nearest-class-mean classifier: logits = −‖f − mean_k‖² + ‖f‖² (the last term is the same
    for every class, so the arg-max is the nearest mean)."""
    missing = sorted(set(range(way)) - set(labels.tolist()))
    if missing:
        raise FewShotError(f"head_init=prototypes needs an example of every class; classes {missing} have none")
    means = prototypes(feats, labels, way).to(head.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(2 * means)
        head.bias.copy_(-(means**2).sum(1))


@dataclass
class ClassifierConfig:
    """A classifier fitted on one task's support features."""

    classifier: str = "logreg"
    """``logreg`` (multinomial logistic regression, scikit-learn) or ``ncm`` (cosine nearest class mean)."""
    C: float = 1.0
    """Inverse L2 regularisation strength of the logistic regression."""
    normalize: bool = True
    """L2-normalise embeddings before the logistic regression (``ncm`` always uses cosine)."""
    max_iter: int = 1000
    temperature: float = 10.0
    """Multiplies the cosine logits of ``ncm`` (argmax, hence accuracy, does not depend on it)."""


class FittedClassifier(nn.Module):
    """A classifier fitted on one task's support features: query features -> logits ``[Q, way]`` (CPU tensors). Its
    ``state_dict()`` is all it learnt; :func:`classifier_from_state` rebuilds it."""

    way: int


class CosineMeans(FittedClassifier):
    """Cosine nearest class mean: ``temperature`` times the cosine with each class mean."""

    def __init__(self, means: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.temperature, self.way = temperature, means.shape[0]

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return cosine_logits(q.float().cpu(), self.means, self.temperature)


class OneClass(FittedClassifier):
    """A support set of one class only: that class wins everywhere."""

    def __init__(self, present: torch.Tensor, way: int) -> None:
        super().__init__()
        self.register_buffer("present", present.reshape(()).long())
        self.register_buffer("classes", torch.zeros(way, dtype=torch.bool))  # keeps the class count in the state
        self.way = way

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full((q.shape[0],), int(self.present)), self.way).float()


class LogisticHead(FittedClassifier):
    """Multinomial logistic regression (scikit-learn's, fitted on the support features): its coefficients, intercepts
    and which of the ``way`` classes it saw (``known``, a mask) are buffers; the scores are scikit-learn's
    ``decision_function`` of the same numbers."""

    def __init__(self, coef: torch.Tensor, intercept: torch.Tensor, known: torch.Tensor, normalize: bool) -> None:
        super().__init__()
        self.register_buffer("coef", coef)
        self.register_buffer("intercept", intercept)
        self.register_buffer("known", known.bool())
        self.way, self.normalize = known.numel(), normalize
        self._fitted = None

    @property
    def classes(self) -> torch.Tensor:
        return torch.nonzero(self.known.cpu()).flatten()

    @classmethod
    def fit(cls, support: torch.Tensor, labels: torch.Tensor, way: int, config: ClassifierConfig) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=config.C, max_iter=config.max_iter)
        clf.fit(_prepare(support, config.normalize), labels.numpy())
        known = torch.zeros(way, dtype=torch.bool)
        known[torch.as_tensor(clf.classes_, dtype=torch.long)] = True
        return cls(torch.from_numpy(np.ascontiguousarray(clf.coef_)),
                   torch.from_numpy(np.ascontiguousarray(clf.intercept_)), known, config.normalize)

    def classifier(self):  # noqa: ANN201 - a scikit-learn LogisticRegression
        """scikit-learn's classifier holding this head's numbers (built once)."""
        if self._fitted is None:
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression()
            clf.coef_ = self.coef.cpu().numpy()
            clf.intercept_ = self.intercept.cpu().numpy()
            clf.classes_ = self.classes.numpy()
            clf.n_features_in_ = clf.coef_.shape[1]
            self._fitted = clf
        return self._fitted

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super()._load_from_state_dict(*args, **kwargs)
        self._fitted = None

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # an export (ONNX): the same numbers in torch, float64 as scikit-learn's
            z = q.float().cpu()
            z = (F.normalize(z, dim=-1) if self.normalize else z).double()
            scores = (z @ self.coef.T.cpu() + self.intercept.cpu()).float()
            if self.coef.shape[0] == 1:  # binary: one row of coefficients, like decision_function's one column
                scores = scores[:, 0]
        else:
            scores = torch.from_numpy(self.classifier().decision_function(_prepare(q, self.normalize))).float()
        if scores.dim() == 1:  # binary: sklearn returns the score of classes_[1]
            scores = torch.stack([-scores, scores], dim=-1)
        out = torch.full((q.shape[0], self.way), -1e9)
        out[:, self.classes] = scores
        return out


def _prepare(z: torch.Tensor, normalize: bool) -> np.ndarray:
    z = z.detach().float().cpu()
    return (F.normalize(z, dim=-1) if normalize else z).double().numpy()


def fit_classifier(support: torch.Tensor, labels: torch.Tensor, way: int,
                   config: ClassifierConfig) -> FittedClassifier:
    """A classifier on support embeddings: a module ``query embeddings -> logits [Q, way]``. Runs on the CPU (a few
    dozen rows: moving them is cheaper than launching GPU kernels); the logits are CPU tensors."""
    support, labels = support.detach().float().cpu(), labels.cpu()
    if config.classifier == "ncm":
        return CosineMeans(cosine_class_means(support, labels, way), config.temperature)
    present = sorted(set(labels.tolist()))
    if len(present) == 1:  # one class only: it wins everywhere
        return OneClass(torch.tensor(present[0]), way)
    return LogisticHead.fit(support, labels, way, config)


def classifier_from_state(state: dict[str, torch.Tensor], way: int, config: ClassifierConfig) -> FittedClassifier:
    """The classifier :func:`fit_classifier` made, from its ``state_dict()`` (keys as it saved them; a missing one
    raises ``KeyError``)."""
    if "means" in state:
        return CosineMeans(state["means"], config.temperature)
    if "present" in state:
        return OneClass(state["present"], way)
    return LogisticHead(state["coef"], state["intercept"], state["known"], config.normalize)


# --- an N-way output layer for MAML / Meta-SGD, ANIL and Reptile, built from the trained one -------------------------

WAY_HEAD_INITS = ("trained", "zeros", "prototypes", "rows")
"""``method.head_init`` of the methods whose model has a trained N-way output layer (MAML, ANIL, Reptile)."""

OTHER_WAY_INIT = "prototypes"
"""What ``head_init: trained`` builds for a task of more classes than the trained head has (no trained head fits it),
for MAML / Meta-SGD and ANIL. Measured with the 5-way Omniglot zoo checkpoints on 20-way tasks, paired on the same
episodes (``results/omniglot.md``, "5-way models on 20-way episodes"): prototypes beat zeros by 1.6-43 points for MAML,
first-order MAML and Meta-SGD at 5 shots and for MAML 5w5s, first-order MAML 5w5s and Meta-SGD at 1 shot; zeros win
for MAML 5w1s and first-order MAML 5w1s at 1 shot and for MAML++; ANIL is within a point either way (its head-only
inner loop reaches about the same head from both). Reptile's is :data:`REPTILE_OTHER_WAY_INIT`."""

REPTILE_OTHER_WAY_INIT = "zeros"
""":data:`OTHER_WAY_INIT` for Reptile: zeros, which beat prototypes by 21.6 and 8.8 points on 20-way 1- and 5-shot
tasks with the shipped (full-budget) Reptile checkpoint (``results/omniglot.md``)."""

FEWER_WAY_INIT = "rows"
"""What ``head_init: trained`` builds for a task of fewer classes than the trained head has, for MAML / Meta-SGD and
Reptile: the trained head's first ``way`` rows (``rows``). The rows are interchangeable (classes get labels at random
in every training task), so a 3-way task starts where the inner loop learned to start. Measured with the 5-way
Omniglot zoo checkpoints and the Meta-SGD run on 3-way tasks at their own shot, paired on the same episodes
(``results/omniglot.md``, "Fewer classes than trained"): rows beat prototypes for MAML, first-order MAML, MAML++,
Meta-SGD and Reptile (2- and 4-way tasks take the same rule, unmeasured). ANIL keeps :data:`OTHER_WAY_INIT`, which
scored higher at 1 shot and the same at 5."""


def check_head_init(value: str) -> None:
    if value not in WAY_HEAD_INITS:
        raise FewShotError(f"method.head_init must be one of {WAY_HEAD_INITS}, got {value!r}")


def resolve_head_init(option: str, way: int, model: nn.Module, fewer: str = FEWER_WAY_INIT,
                      more: str = OTHER_WAY_INIT) -> str:
    """The head a task of ``way`` classes starts from: the trained head (``trained``, when its way is the task's),
    a zero one (``zeros``), the nearest-prototype one (``prototypes``) or the trained head's first ``way`` rows
    (``rows``, for at most the trained way; at the trained way that is the trained head). ``trained`` for fewer
    classes is ``fewer``, for more ``more`` (the method's: :data:`FEWER_WAY_INIT` and :data:`OTHER_WAY_INIT` by
    default). A model without an output layer takes ``trained`` (its own forward, as before)."""
    if option == "trained":
        if getattr(model, "head", None) is None or way == trained_way(model):
            return "trained"
        return fewer if way < trained_way(model) else more
    trained = trained_way(model)  # a clear error when there is no head to replace
    if option == "rows":
        if way > trained:
            raise FewShotError(f"method.head_init=rows starts a task from the trained head's first rows, but this "
                               f"{way}-way task has more classes than its {trained}: use prototypes or zeros")
        return "trained" if way == trained else "rows"
    return option


def task_head_plan(option: str, way: int, model: nn.Module, labels: torch.Tensor, fewer: str = FEWER_WAY_INIT,
                   more: str = OTHER_WAY_INIT) -> str:
    """:func:`resolve_head_init` for a task whose support labels are ``labels``, checked against the head it builds
    (:func:`check_support_labels`; the trained head as it is needs no check)."""
    plan = resolve_head_init(option, way, model, fewer, more)
    if plan != "trained":
        check_support_labels(labels, way, every_class=plan == "prototypes")
    return plan


def head_identity(option: str, way: int, model: nn.Module, fewer: str = FEWER_WAY_INIT,
                  more: str = OTHER_WAY_INIT) -> dict[str, str]:
    """What a method that builds heads per task adds to an evaluation record's identity
    (:meth:`fewshot.methods.base.Method.record_identity`): ``{"head": plan}`` where ``head_init`` now builds a head
    that prototypes were built for before, under the same config: the trained head's rows (fewer classes) and, for
    ``trained``, zeros (Reptile, more classes); so older records are scored afresh. Nothing otherwise, so every other
    record keeps its identity."""
    plan = resolve_head_init(option, way, model, fewer, more)
    return {"head": plan} if plan == "rows" or (option == "trained" and plan == "zeros") else {}


def trained_rows(head: Sequence[torch.Tensor], way: int) -> list[torch.Tensor]:
    """The first ``way`` rows of the trained output layer ``[w [N, D], b [N]]`` (of a per-class tensor such as
    Meta-SGD's head rates too), differentiable in it."""
    return [t[:way].clone() if isinstance(t, torch.Tensor) else t for t in head]


def trainable(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors``, each one an inner loop can differentiate (a tensor outside any graph is marked so)."""
    return [t if t.requires_grad else t.requires_grad_() for t in tensors]


def trained_way(model: nn.Module) -> int:
    """The way of the model's trained output layer; a clear error when it has none."""
    head = getattr(model, "head", None)
    if head is None:
        raise FewShotError(f"this {type(model).__name__} was built without an output layer, so no N-way head can be "
                           "built from it (build it with out_features)")
    return int(head.out_features)


def zero_head(like: Sequence[torch.Tensor], way: int) -> list[torch.Tensor]:
    """``[w [way, D], b [way]]`` of zeros, of the dtype and device of the trained head ``like``."""
    w, b = like
    return [w.new_zeros(way, w.shape[-1]), b.new_zeros(way)]


def prototype_head_params(features: torch.Tensor, labels: torch.Tensor, way: int) -> list[torch.Tensor]:
    """Proto-MAML's output layer (Triantafillou et al. 2020): ``w_c = 2 p_c``, ``b_c = -‖p_c‖²`` for the class means
    ``p_c`` of ``features [..., B, D]`` by ``labels [..., B]`` (leading task dimensions kept), so the logits are
    ``-‖f - p_c‖²`` up to a term shared by every class. Differentiable in ``features``."""
    protos = prototypes(features, labels, way)
    return [2 * protos, -(protos**2).sum(-1)]


def check_support_labels(labels: torch.Tensor, way: int, every_class: bool) -> None:
    """A clear error when a support label is outside ``0..way-1`` (the head built for the task has ``way`` rows),
    or, with ``every_class`` (a head of prototypes), when a class has no support example (its prototype would be
    undefined)."""
    flat = labels.reshape(-1).cpu()
    if len(flat) and int(flat.min()) < 0:
        raise FewShotError(f"a {way}-way task has labels 0..{way - 1}, but its support set has label {int(flat.min())}")
    counts = torch.bincount(flat, minlength=way)
    if len(counts) > way:
        raise FewShotError(f"a {way}-way task has labels 0..{way - 1}, but its support set has label {len(counts) - 1}")
    if every_class and (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise FewShotError(f"head_init=prototypes needs a support example of each of the {way} classes (labels "
                           f"0..{way - 1}); classes {missing} have none")


def extend_rows(rows: torch.Tensor, way: int) -> torch.Tensor:
    """A per-class tensor ``[n, ...]`` (Meta-SGD's learned rates of the head's rows) for ``way`` classes: unchanged
    when ``way == n``, else every row is the mean of the trained rows. The rows are interchangeable (labels are
    assigned to classes at random in every training task), so their mean is the estimate for a new class's row."""
    if rows.shape[0] == way:
        return rows
    return rows.mean(0, keepdim=True).expand(way, *rows.shape[1:])
