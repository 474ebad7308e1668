"""Prompt tuning (Lester et al. 2021) on a frozen language model, and a meta-learned prompt initialisation.

A few trainable soft-prompt vectors are inserted into the frozen model's input embeddings; per task, only the prompt
(and a small head) are tuned on the support set, with Adam, for ``steps`` steps. Two kinds of model:

* a sentence encoder (:class:`~fewshot.models.text.MiniLMEncoder`): the prompt goes after ``[CLS]``; the head is
  ``class_mean`` (cosine classifier whose weights start at the normalised class means of the support embeddings,
  then train) or ``linear`` (a zero-initialised linear layer);
* a causal LM (:class:`~fewshot.models.text.SmolLM2`): the prompt goes first, classes are scored by the LM's
  next-token logits of their label words (a verbalizer; the intent names, ``_`` read as a space). No head.

The prompt initialisation is the meta-parameter. ``init`` picks where it starts: ``random`` (Gaussian with the
word embeddings' standard deviation) or ``vocab`` (embeddings of random vocabulary tokens), seeded. Meta-training
(``meta: fomaml`` or ``reptile``) then learns it across training tasks, with exactly the tuning routine used at test
time as the inner loop (``inner_steps`` steps):

* ``fomaml`` — first-order MAML: the meta-gradient is the query-loss gradient at the tuned prompt;
* ``reptile`` — the meta-gradient is ``prompt - tuned prompt``, so an SGD outer step with rate eps is Reptile's
  ``prompt += eps * (tuned - prompt)``.

``meta: none`` leaves the initialisation where it started (``meta_gradient`` touches nothing): the
random-/vocabulary-initialised baseline tuned for the same number of steps.
The frozen model stays in eval mode (no dropout), never receives gradients, and is not part of the method's
``state_dict`` (a checkpoint holds the prompt only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.errors import FewShotError
from fewshot.methods.base import Adapted, Method, accuracy, restored
from fewshot.methods.heads import cosine_class_means

INITS = ("random", "vocab")
HEADS = ("class_mean", "linear")
META = ("none", "fomaml", "reptile")


@dataclass
class PromptConfig:
    length: int = 8
    """Number of soft-prompt vectors."""
    init: str = "random"
    """Starting point of the prompt: ``random`` (Gaussian, word-embedding std) or ``vocab`` (random token vectors)."""
    init_seed: int = 0
    init_scale: float = 1.0
    """``random`` init: multiple of the word embeddings' standard deviation."""
    head: str = "class_mean"
    """Encoder head: ``class_mean`` (cosine, starts at the support class means) or ``linear`` (zero init)."""
    temperature: float = 10.0
    """Multiplies the cosine head's logits."""
    steps: int = 10
    """Tuning steps on a new task's support set (evaluation)."""
    lr: float = 0.01
    """Adam learning rate of the prompt during tuning."""
    head_lr: float = 0.01
    meta: str = "fomaml"
    """How the initialisation is meta-learned: ``fomaml``, ``reptile`` or ``none`` (no meta-learning)."""
    inner_steps: int = 5
    """Tuning steps per training task during meta-training."""

    def __post_init__(self) -> None:
        if self.length < 1:
            raise FewShotError(f"method.length must be >= 1, got {self.length}")
        for name, value, allowed in (("init", self.init, INITS), ("head", self.head, HEADS),
                                     ("meta", self.meta, META)):
            if value not in allowed:
                raise FewShotError(f"method.{name} must be one of {allowed}, got {value!r}")
        if self.steps < 0 or self.inner_steps < 1:
            raise FewShotError(f"method.steps must be >= 0 and inner_steps >= 1, got {self.steps}, "
                               f"{self.inner_steps}")
        if not (self.lr > 0 and self.head_lr >= 0 and self.temperature > 0 and self.init_scale > 0):
            raise FewShotError("method.lr, method.temperature and method.init_scale must be > 0, method.head_lr >= 0")


def initial_prompt(embeddings: nn.Embedding, length: int, init: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    """``[length, dim]`` starting prompt from the model's word embeddings (seeded)."""
    g = torch.Generator().manual_seed(seed)
    weight = embeddings.weight.detach()
    if init == "random":
        return torch.randn(length, weight.shape[1], generator=g) * weight.std().item() * scale
    vocab = weight.shape[0]
    low = min(1000, vocab // 10)  # skip special / unused tokens at the start of the vocabulary
    ids = torch.randint(low, min(vocab, low + 5000), (length,), generator=g)
    return weight[ids.to(weight.device)].cpu().clone()


class TunedPrompt(Adapted):
    """Prompt tuning adapted to a task: the tuned ``prompt``, the tuned head (``head_0``, ``head_1``: none for a
    verbalizer, the class-mean weights, or a linear layer's weight and bias) and, for a verbalizer, the label words'
    token ids (``label_ids``, flat, cut by ``label_lengths``), over the method's frozen model."""

    def __init__(self, method: PromptTuning, prompt: torch.Tensor, head: Sequence[torch.Tensor],
                 label_ids: Sequence[Sequence[int]] | None = None, flat_ids: torch.Tensor | None = None,
                 lengths: torch.Tensor | None = None) -> None:
        if label_ids is not None:
            flat_ids = torch.tensor([i for ids in label_ids for i in ids], dtype=torch.long)
            lengths = torch.tensor([len(ids) for ids in label_ids], dtype=torch.long)
        super().__init__(method, lengths.numel() if lengths is not None else head[0].shape[0])
        self.heads = len(head)
        self.tensors(prompt=prompt, **{f"head_{i}": h for i, h in enumerate(head)}, label_ids=flat_ids,
                     label_lengths=lengths)

    def label_words(self) -> list[list[int]] | None:
        if self.label_lengths is None:
            return None
        ids = self.label_ids.tolist()
        bounds = [0, *torch.cumsum(self.label_lengths.cpu(), 0).tolist()]
        return [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def forward(self, query_x: list[str]) -> torch.Tensor:
        head = [getattr(self, f"head_{i}") for i in range(self.heads)]
        with torch.no_grad():
            return self.method.logits(query_x, self.prompt, head, self.label_words())


class PromptTuning(Method):
    """Soft-prompt tuning of a frozen text model; the prompt initialisation is meta-learned (or not)."""

    name = "prompt"
    needs_head = False
    needs_query = False  # the Reptile-style meta-update trains without queries; fomaml checks for them itself

    def __init__(self, model: nn.Module, config: PromptConfig | None = None) -> None:
        super().__init__()
        self.config = config or PromptConfig()
        # held outside the module tree: checkpoints hold only the prompt, not the frozen model's weights
        self._frozen = (model,)
        self.model.requires_grad_(False)
        self.model.eval()
        self.verbalizer = callable(getattr(model, "label_logits", None))
        if not self.verbalizer and not callable(getattr(model, "features", None)):
            raise FewShotError(f"prompt tuning needs a text model with features(texts, soft_prompt) or "
                               f"label_logits(...); {type(model).__name__} has neither")
        embeddings = model.word_embeddings()
        self.prompt = nn.Parameter(initial_prompt(embeddings, self.config.length, self.config.init,
                                                  self.config.init_seed, self.config.init_scale))
        self.class_names: Sequence[str] | None = None

    @property
    def model(self) -> nn.Module:
        """The frozen text model (not a submodule: not in ``state_dict``, never trained)."""
        return self._frozen[0]

    def _apply(self, fn: Any, recurse: bool = True) -> PromptTuning:
        """``to()``, ``cuda()``, ``float()``... also move the frozen model, which is not a submodule."""
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> PromptTuning:
        super().train(mode)
        self.model.eval()  # the frozen model never uses dropout
        return self

    def meta_parameters(self) -> list[nn.Parameter]:
        return [self.prompt]

    def set_class_names(self, names: Sequence[str] | None) -> None:
        """Class names of the data set whose tasks come next (the verbalizer's label words)."""
        self.class_names = list(names) if names is not None else None

    # --- one task -------------------------------------------------------------------------------------------------

    def _label_ids(self, way: int, names: Sequence[str] | None) -> list[list[int]] | None:
        if not self.verbalizer:
            return None
        if names is None and self.class_names is not None and len(self.class_names) == way:
            names = self.class_names  # a support set labelled in the data set's own class order
        if names is None:
            raise FewShotError("the SmolLM2 verbalizer scores label words: it needs the class names of the task "
                               "(run it with kind 'text_episodic' or 'text_all_classes', or call set_class_names())")
        if len(names) != way:
            raise FewShotError(f"{len(names)} class names for a {way}-way task")
        return self.model.label_token_ids(list(names))

    def _features(self, x: list[str], prompt: torch.Tensor) -> torch.Tensor:
        return self.model.features(x, prompt)

    def _init_head(self, x: list[str], y: torch.Tensor, way: int, prompt: torch.Tensor) -> list[torch.Tensor]:
        if self.verbalizer:
            return []
        if self.config.head == "linear":
            dim = self.model.feature_dim
            device = prompt.device
            return [torch.zeros(way, dim, device=device, requires_grad=True),
                    torch.zeros(way, device=device, requires_grad=True)]
        with torch.no_grad():
            means = cosine_class_means(self._features(x, prompt), y, way, normalized=True)
        return [means.clone().requires_grad_()]

    def logits(self, x: list[str], prompt: torch.Tensor, head: list[torch.Tensor],
               label_ids: list[list[int]] | None) -> torch.Tensor:
        """Class scores ``[len(x), way]`` with the given prompt and head."""
        if self.verbalizer:
            return self.model.label_logits(x, label_ids, prompt)
        z = self._features(x, prompt)
        if self.config.head == "linear":
            return F.linear(z, head[0], head[1])
        return self.config.temperature * z @ head[0].T

    def tune(self, x: list[str], y: torch.Tensor, way: int, steps: int, names: Sequence[str] | None = None,
             start: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], list[list[int]] | None]:
        """Adam on the prompt (from ``start``, default the meta-learned init) and head, on ``(x, y)``."""
        if len(x) != y.shape[0]:
            raise FewShotError(f"{len(x)} support texts but {y.shape[0]} labels")
        label_ids = self._label_ids(way, names)
        y = y.to(self.prompt.device)
        prompt = (self.prompt if start is None else start).detach().to(self.prompt.device).clone().requires_grad_()
        with torch.enable_grad():
            head = self._init_head(x, y, way, prompt)
            groups: list[dict[str, Any]] = [{"params": [prompt], "lr": self.config.lr}]
            if head:
                groups.append({"params": head, "lr": self.config.head_lr or self.config.lr})
            optimizer = torch.optim.Adam(groups)
            for _ in range(steps):
                loss = F.cross_entropy(self.logits(x, prompt, head, label_ids), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return prompt.detach(), [h.detach() for h in head], label_ids

    def adapt(self, support_x: list[str], support_y: torch.Tensor, way: int,
              class_names: Sequence[str] | None = None, start: torch.Tensor | None = None) -> TunedPrompt:
        prompt, head, label_ids = self.tune(support_x, support_y, way, self.config.steps, class_names, start)
        if label_ids is None:
            return TunedPrompt(self, prompt, head)
        return TunedPrompt(self, prompt, head, label_ids)

    def restore(self, state: dict[str, torch.Tensor], way: int) -> TunedPrompt:
        heads = 0 if self.verbalizer else 2 if self.config.head == "linear" else 1
        if self.verbalizer:
            return restored(lambda: TunedPrompt(self, state["prompt"], [], None, state["label_ids"],
                                                state["label_lengths"]), state, way, self.name)
        return restored(lambda: TunedPrompt(self, state["prompt"], [state[f"head_{i}"] for i in range(heads)]),
                        state, way, self.name)

    def _task_names(self, episode: Episode, t: int) -> list[str] | None:
        if self.class_names is None or not self.verbalizer:  # only a verbalizer reads label words
            return None
        classes = episode.classes[t].tolist()
        if max(classes) >= len(self.class_names):
            raise FewShotError(f"the episode has class {max(classes)} but the method knows {len(self.class_names)} "
                               f"class names: call set_class_names() with the names of the split it samples")
        return [self.class_names[c] for c in classes]

    def predict(self, episode: Episode, start: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[tasks, N*Q, N]``, each task tuned from ``start`` (default: the current initialisation)."""
        out = []
        for t in range(episode.num_tasks):
            predictor = self.adapt(episode.support_x[t], episode.support_y[t], episode.way,
                                   self._task_names(episode, t), start)
            out.append(predictor(episode.query_x[t]))
        return torch.stack(out)

    # --- meta-training --------------------------------------------------------------------------------------------

    def training_gradient(self, episode: Episode) -> dict[str, float]:
        tasks = episode.num_tasks
        grad = torch.zeros_like(self.prompt)
        total_loss, total_acc = 0.0, 0.0
        for t in range(tasks):
            names = self._task_names(episode, t)
            prompt, head, label_ids = self.tune(episode.support_x[t], episode.support_y[t], episode.way,
                                                self.config.inner_steps, names)
            has_query = episode.query_y.shape[1] > 0
            with torch.enable_grad():
                fast = prompt.clone().requires_grad_()
                if has_query:
                    logits = self.logits(episode.query_x[t], fast, head, label_ids)
                    query_y = episode.query_y[t].to(logits.device)
                    loss = F.cross_entropy(logits, query_y)
                    total_loss += loss.item()
                    total_acc += accuracy(logits, query_y)
                    if self.config.meta == "fomaml":
                        grad += torch.autograd.grad(loss, fast)[0] / tasks
            if self.config.meta == "fomaml" and not has_query:
                raise FewShotError("first-order MAML needs query examples (train.query >= 1)")
            if self.config.meta == "reptile":
                grad += (self.prompt.detach() - prompt) / tasks
        if self.config.meta != "none":
            self.prompt.grad = grad if self.prompt.grad is None else self.prompt.grad + grad
        return {"loss": total_loss / tasks, "accuracy": total_acc / tasks}
