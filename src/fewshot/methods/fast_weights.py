"""The predictor of the methods that adapt all of a functional model's weights (MAML, Meta-SGD, Reptile)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fewshot.methods.base import Adapted, Method, restored
from fewshot.models.base import each_query_with_support


class FastWeights(Adapted):
    """The task's fast weights (``fast_0 .. fast_n``, in ``meta_parameters()`` order, the head last) and its support
    inputs (``support_x``), with which each query is scored when not ``transductive`` (batch statistics from the
    support set and that query, :func:`fewshot.models.base.each_query_with_support`)."""

    def __init__(self, method: Method, fast: Sequence[torch.Tensor], support_x: torch.Tensor, transductive: bool,
                 batched: bool, step: dict[str, int] | None = None) -> None:
        super().__init__(method, fast[-1].shape[0])
        self.count = len(fast)
        self.tensors(**{f"fast_{i}": p for i, p in enumerate(fast)}, support_x=support_x)
        self.transductive, self.batched = transductive, batched
        self.step = step or {}
        """``{"step": n}`` for a model with per-step batch norm (MAML++): the inner updates the fast weights had."""

    @property
    def fast(self) -> list[torch.Tensor]:
        return [getattr(self, f"fast_{i}") for i in range(self.count)]

    def forward(self, query_x: Any) -> torch.Tensor:
        model = self.method.model
        if self.transductive:
            return model(query_x, self.fast, **self.step)
        return each_query_with_support(model, self.fast, self.support_x, query_x, batched=self.batched, **self.step)

    @classmethod
    def restore(cls, method: Method, state: dict[str, torch.Tensor], way: int, transductive: bool,
                batched: bool, step: dict[str, int] | None = None) -> FastWeights:
        count = len(method.model.meta_parameters())
        return restored(lambda: cls(method, [state[f"fast_{i}"] for i in range(count)], state["support_x"],
                                    transductive, batched, step), state, way, method.name)
