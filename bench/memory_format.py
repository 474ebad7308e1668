"""Channels-last convolutions on the CPU: the speed of a training step against the accuracy of its gradient.

For each recipe, one process builds the method (seed 0) and one real training batch, then alternates the model
between the default (NCHW) and the channels-last memory format, ``--rounds`` times, timing ``--steps`` training
gradients in each (after one untimed step). Each format's gradient is compared with the same gradient computed in
float64 (NCHW), on the recipe's freshly initialised weights and, with ``--weights``, on trained ones:
``|g - g64| / |g64|`` per weight tensor of the backbone's convolutions and batch norms (the conv biases left out:
batch norm cancels them, so their gradient is rounding noise; so are method scalars such as MetaOptNet's lambda).
Writes JSON.

    python bench/memory_format.py --out bench/out/memory_format.json \
        --weights omniglot_20w1s_protonet=training/omniglot_20w1s_protonet/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.config import load_config
from fewshot.engine.checkpoint import load_checkpoint
from fewshot.engine.experiment import build_experiment
from fewshot.engine.scoring import load_weights
from fewshot.hardware import machine

COMPARED = re.compile(r"^model\.(convs\.\d+\.weight|norms\.\d+\.(weight|bias))$")


def gradients(method: Any, batch: Any) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    method.training_gradient(batch)
    return {n: p.grad.detach().double().clone() for n, p in method.named_parameters()
            if p.grad is not None and COMPARED.search(n)}


def in_float64(batch: Any) -> Any:
    changes = {f.name: getattr(batch, f.name).double() for f in dataclasses.fields(batch)
               if torch.is_tensor(getattr(batch, f.name)) and getattr(batch, f.name).is_floating_point()}
    return dataclasses.replace(batch, **changes)


def errors(method: Any, batch: Any) -> dict[str, dict[str, float]]:
    """Largest and median relative error of each format's gradient against float64, over the parameter tensors."""
    out = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        method.float().to(memory_format=fmt)
        got = gradients(method, batch)
        method.double().to(memory_format=torch.contiguous_format)
        exact = gradients(method, in_float64(batch))
        method.float()
        rel = [float((got[k] - exact[k]).norm() / exact[k].norm()) for k in exact if exact[k].norm() > 0]
        out[name] = {"max": max(rel), "median": statistics.median(rel)}
    return out


def layers() -> dict[str, dict[str, list[float]]]:
    """Each Conv-4 layer kind alone (64 channels, 360 x 14 x 14 inputs of mean 5 and spread 3, a fixed ramp as the
    output gradient): relative error against float64 of the input gradient, then of each parameter's."""
    torch.manual_seed(0)
    x64 = torch.randn(360, 64, 14, 14, dtype=torch.float64) * 3 + 5
    kinds = {"batch_norm": lambda: torch.nn.BatchNorm2d(64), "conv3x3": lambda: torch.nn.Conv2d(64, 64, 3, padding=1),
             "max_pool": lambda: torch.nn.MaxPool2d(2), "relu": lambda: torch.nn.ReLU()}

    def grads(layer: torch.nn.Module, x: torch.Tensor, fmt: torch.memory_format) -> list[torch.Tensor]:
        layer = layer.train().to(memory_format=fmt)
        x = x.detach().clone(memory_format=fmt).requires_grad_(True)
        y = layer(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        return [x.grad.double()] + [p.grad.double() for p in layer.parameters()]

    out = {}
    for kind, make in kinds.items():
        torch.manual_seed(1)
        exact = grads(make().double(), x64, torch.contiguous_format)
        out[kind] = {}
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(1)
            got = grads(make(), x64.float(), fmt)
            out[kind][name] = [float((g - e).norm() / e.norm()) for g, e in zip(got, exact, strict=True)]
    return out


def measure(recipe: str, overrides: list[str], rounds: int, steps: int, weights: str | None, root: str | None
            ) -> dict[str, Any]:
    torch.manual_seed(0)
    experiment = build_experiment(load_config(recipe, overrides), root)
    method, batch = experiment.method, experiment.batch(0)
    method.train()
    seconds: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for _ in range(rounds):
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            method.to(memory_format=fmt)
            gradients(method, batch)
            start = time.perf_counter()
            for _ in range(steps):
                gradients(method, batch)
            seconds[name].append((time.perf_counter() - start) / steps)
    result = {"recipe": recipe, "overrides": overrides, "seconds_per_step": seconds,
              "speedup_median": statistics.median(seconds["nchw"]) / statistics.median(seconds["channels_last"]),
              "gradient_error_at_init": errors(method, batch)}
    if weights:
        load_weights(method, load_checkpoint(Path(weights)).weights, weights)
        method.train()
        result["weights"] = weights
        result["gradient_error_trained"] = errors(method, batch)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["omniglot_20w1s_protonet", "omniglot_5w1s_metaoptnet"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", nargs="*", default=[], help="RECIPE=CHECKPOINT: also compare on trained weights")
    parser.add_argument("--data-root")
    parser.add_argument("--out", type=Path, default=Path("bench/out/memory_format.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = dict(item.split("=", 1) for item in args.weights)
    rows = []
    for recipe in args.recipes:
        rows.append(measure(recipe, [f"train.threads={args.threads}"], args.rounds, args.steps,
                            weights.get(recipe), args.data_root))
        row = rows[-1]
        print(f"{recipe}: channels_last {row['speedup_median']:.2f}x; gradient error vs float64 at init "
              f"{row['gradient_error_at_init']}" + (f", trained {row['gradient_error_trained']}"
                                                    if "gradient_error_trained" in row else ""), flush=True)
    single = layers()
    print(f"layers alone: {single}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "threads": args.threads, "results": rows, "layers": single},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
