"""The benchmark's contestants: one meta-training step (meta-gradient + outer optimiser step) per variant.

Peers are the libraries as installed from PyPI by ``scripts/setup_bench.sh`` (learn2learn 0.2.0, higher 0.2.1,
TorchOpt 0.7.3), each used the way its own MAML example for Omniglot does, on a standard ``nn.Sequential`` Conv-4 with
the same weights as ours. Nothing of theirs is copied here.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.tasks import Episode
from fewshot.methods.maml import MAML, MAMLConfig
from fewshot.methods.reptile import Reptile, ReptileConfig
from fewshot.models.conv4 import Conv4

Step = Callable[[Episode], float]
"""One meta-training iteration on a meta-batch; returns the mean query loss (before the outer step)."""


@dataclass(frozen=True)
class Case:
    """What is trained: the algorithm and its inner loop (the tasks come with the episode)."""

    algorithm: str = "maml"
    """``maml`` (second-order), ``fomaml`` or ``reptile``."""
    inner_steps: int = 1
    inner_lr: float = 0.4
    outer_lr: float = 1e-3
    task_chunk: int = 8
    """Our fast path's tasks per chunk."""


def import_l2l_maml() -> types.ModuleType:
    """``learn2learn.algorithms.maml`` without running ``learn2learn/__init__`` (it imports torchvision and gym)."""
    if "learn2learn.algorithms.maml" in sys.modules:
        return sys.modules["learn2learn.algorithms.maml"]
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("learn2learn is not installed: run scripts/setup_bench.sh")
    for name, where in (("learn2learn", list(spec.submodule_search_locations)),
                        ("learn2learn.algorithms", [f"{spec.submodule_search_locations[0]}/algorithms"])):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = where
            sys.modules[name] = package
    return importlib.import_module("learn2learn.algorithms.maml")


class MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def standard_conv4(model: Conv4) -> nn.Sequential:
    """The same network as ``model`` (strided Conv-4, mean pooling, head) from standard modules, same weights."""
    if model.variant != "strided" or model.pool != "mean" or model.head is None:
        raise ValueError("the peers' Conv-4 mirrors the strided, mean-pooled Conv-4 with a head")
    layers: list[nn.Module] = []
    for conv, norm in zip(model.convs, model.norms, strict=True):
        layers += [copy.deepcopy(conv), nn.BatchNorm2d(conv.out_channels, track_running_stats=False), nn.ReLU()]
        with torch.no_grad():
            layers[-2].weight.copy_(norm.weight)
            layers[-2].bias.copy_(norm.bias)
    layers += [MeanPool(), copy.deepcopy(model.head)]
    return nn.Sequential(*layers).to(model.head.weight.dtype)


def load_standard_conv4(net: nn.Sequential, model: Conv4) -> None:
    """The inverse of :func:`standard_conv4`: copy ``net``'s weights into ``model`` (so ours can score them)."""
    with torch.no_grad():
        for i, (conv, norm) in enumerate(zip(model.convs, model.norms, strict=True)):
            for ours_, theirs in ((conv, net[3 * i]), (norm, net[3 * i + 1])):
                ours_.weight.copy_(theirs.weight)
                if ours_.bias is not None:
                    ours_.bias.copy_(theirs.bias)
        model.head.weight.copy_(net[-1].weight)
        model.head.bias.copy_(net[-1].bias)


def _images(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


def ours(model: Conv4, case: Case, reference: bool = False, bf16: bool = False) -> Step:
    """fewshot's MAML / FOMAML / Reptile: the fast path, or the plain per-task reference; ``bf16`` runs the step
    under bfloat16 autocast, as ``train.precision=bf16`` does."""
    if case.algorithm == "reptile":
        method = Reptile(model, ReptileConfig(inner_steps=case.inner_steps, inner_lr=case.inner_lr, inner_batch=10,
                                              reference=reference))
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=case.outer_lr)
    else:
        method = MAML(model, MAMLConfig(inner_steps=case.inner_steps, inner_lr=case.inner_lr,
                                        first_order=case.algorithm == "fomaml", reference=reference,
                                        task_chunk=case.task_chunk))
        optimizer = torch.optim.Adam(model.parameters(), lr=case.outer_lr)

    def step(episode: Episode) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            metrics = method.training_gradient(episode)
        optimizer.step()
        return metrics["loss"]

    return step


def learn2learn(model: Conv4, case: Case, net: nn.Module | None = None) -> Step:
    """learn2learn 0.2.0's ``MAML`` wrapper as in its Omniglot example: clone, adapt, backward, average. It trains
    ``net`` (default: :func:`standard_conv4` of ``model``), so a caller that passes it can read the weights."""
    l2l = import_l2l_maml()
    if case.algorithm not in ("maml", "fomaml"):
        raise ValueError(f"learn2learn's MAML runs maml or fomaml, not {case.algorithm}")
    maml = l2l.MAML(standard_conv4(model) if net is None else net, lr=case.inner_lr,
                    first_order=case.algorithm == "fomaml")
    optimizer = torch.optim.Adam(maml.parameters(), lr=case.outer_lr)

    def step(episode: Episode) -> float:
        optimizer.zero_grad()
        tasks, total = episode.num_tasks, 0.0
        for t in range(tasks):
            learner = maml.clone()
            for _ in range(case.inner_steps):
                learner.adapt(F.cross_entropy(learner(_images(episode.support_x[t])), episode.support_y[t]))
            loss = F.cross_entropy(learner(_images(episode.query_x[t])), episode.query_y[t])
            loss.backward()
            total += loss.item()
        for p in maml.parameters():
            p.grad.data.mul_(1.0 / tasks)
        optimizer.step()
        return total / tasks

    return step


def higher_maml(model: Conv4, case: Case) -> Step:
    """higher 0.2.1's ``innerloop_ctx`` with a differentiable SGD, as in its MAML Omniglot example."""
    import higher

    if case.algorithm != "maml":
        raise ValueError("higher runs second-order MAML only here")
    net = standard_conv4(model)
    inner = torch.optim.SGD(net.parameters(), lr=case.inner_lr)
    optimizer = torch.optim.Adam(net.parameters(), lr=case.outer_lr)

    def step(episode: Episode) -> float:
        optimizer.zero_grad()
        tasks, total = episode.num_tasks, 0.0
        for t in range(tasks):
            with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(case.inner_steps):
                    diffopt.step(F.cross_entropy(fnet(_images(episode.support_x[t])), episode.support_y[t]))
                loss = F.cross_entropy(fnet(_images(episode.query_x[t])), episode.query_y[t])
                (loss / tasks).backward()
            total += loss.item()
        optimizer.step()
        return total / tasks

    return step


def torchopt_maml(model: Conv4, case: Case) -> Step:
    """TorchOpt 0.7.3's ``MetaSGD`` with state extract/recover, as in its MAML Omniglot example (pure Python)."""
    import torchopt

    if case.algorithm != "maml":
        raise ValueError("TorchOpt runs second-order MAML only here")
    net = standard_conv4(model)
    inner = torchopt.MetaSGD(net, lr=case.inner_lr)
    optimizer = torch.optim.Adam(net.parameters(), lr=case.outer_lr)

    def step(episode: Episode) -> float:
        optimizer.zero_grad()
        tasks, total = episode.num_tasks, 0.0
        net_state = torchopt.extract_state_dict(net)
        inner_state = torchopt.extract_state_dict(inner)
        for t in range(tasks):
            for _ in range(case.inner_steps):
                inner.step(F.cross_entropy(net(_images(episode.support_x[t])), episode.support_y[t]))
            loss = F.cross_entropy(net(_images(episode.query_x[t])), episode.query_y[t])
            (loss / tasks).backward()
            total += loss.item()
            torchopt.recover_state_dict(net, net_state)
            torchopt.recover_state_dict(inner, inner_state)
        optimizer.step()
        return total / tasks

    return step


def plain_reptile(model: Conv4, case: Case) -> Step:
    """Reptile as learn2learn's example writes it (the library has no Reptile class): a deep copy per task trained
    with ``torch.optim.Adam`` (beta1 = 0), then ``theta - phi`` summed into the gradient; query accuracy after."""
    net = standard_conv4(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=case.outer_lr)

    def step(episode: Episode) -> float:
        optimizer.zero_grad()
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        tasks, total = episode.num_tasks, 0.0
        for t in range(tasks):
            learner = copy.deepcopy(net)
            adapt = torch.optim.Adam(learner.parameters(), lr=case.inner_lr, betas=(0.0, 0.999))
            x, y = _images(episode.support_x[t]), episode.support_y[t]
            for _ in range(case.inner_steps):
                pick = torch.randperm(len(y))[:10]
                loss = F.cross_entropy(learner(x[pick]), y[pick])
                adapt.zero_grad()
                loss.backward()
                adapt.step()
            total += loss.item()
            with torch.no_grad():
                learner(_images(episode.query_x[t])).argmax(-1)
                for p, q in zip(net.parameters(), learner.parameters(), strict=True):
                    p.grad.add_(p.data - q.data, alpha=1.0 / tasks)
        optimizer.step()
        return total / tasks

    return step


VARIANTS: dict[str, Callable[[Conv4, Case], Step]] = {
    "ours": ours,
    "ours-reference": lambda model, case: ours(model, case, reference=True),
    "ours-bf16": lambda model, case: ours(model, case, bf16=True),
    "learn2learn": learn2learn,
    "higher": higher_maml,
    "torchopt": torchopt_maml,
    "plain-reptile": plain_reptile,
}


def make_step(variant: str, model: Conv4, case: Case) -> Step:
    """The step of ``variant``; ``ours:N`` is our fast path with ``task_chunk`` N (tasks batched at a time)."""
    name, _, chunk = variant.partition(":")
    if chunk:
        if name != "ours" or not chunk.isdigit():
            raise ValueError(f"unknown variant {variant!r}: only ours:N takes a task chunk")
        return ours(model, dataclasses.replace(case, task_chunk=int(chunk)))
    return VARIANTS[variant](model, case)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "learn2learn", "higher", "torchopt"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check() -> None:
    """Import every peer (what ``scripts/setup_bench.sh`` ends with)."""
    import higher  # noqa: F401
    import torchopt  # noqa: F401

    import_l2l_maml()
    print("bench peers:", ", ".join(f"{k} {v}" for k, v in versions().items()))
