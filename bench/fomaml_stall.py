"""Why learn2learn's first-order MAML stalls on Omniglot 5-way 1-shot: numbers for ``results/speed.md``.

1. ``grad``: learn2learn's first-order meta-gradient against ours (fast and reference) and against the FOMAML formula,
   in float64, same init, same real tasks.
2. ``train``: short first-order runs (inner lr 0.4, 1 step, meta-batch 32, Adam 1e-3), same tasks for all, printing
   the query accuracy after the inner step, for learn2learn and ours, from our Conv-4 initialisation and from
   learn2learn's ``OmniglotCNN`` initialisation (head ~ N(0, 1), batch-norm scales ~ U(0, 1)).

    python bench/fomaml_stall.py grad
    python bench/fomaml_stall.py train --iters 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import import_l2l_maml, standard_conv4  # noqa: E402
from fewshot.data.omniglot import omniglot  # noqa: E402
from fewshot.data.tasks import TaskSampler  # noqa: E402
from fewshot.methods.maml import MAML, MAMLConfig  # noqa: E402
from fewshot.models.conv4 import Conv4  # noqa: E402


def l2l_init_(model: Conv4, seed: int = 0) -> Conv4:
    """learn2learn's ``OmniglotCNN`` initialisation on our Conv-4: xavier convs, BN scales U(0, 1), head N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in model.norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=g))
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.zero_()
    return model


def l2l_step(maml, episode, steps: int = 1) -> tuple[float, float]:
    """learn2learn's example loop: clone, adapt, query loss backward per task, grads averaged."""
    tasks, loss_sum, acc_sum = episode.num_tasks, 0.0, 0.0
    for t in range(tasks):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(episode.support_x[t].unsqueeze(1)), episode.support_y[t]))
        logits = learner(episode.query_x[t].unsqueeze(1))
        loss = F.cross_entropy(logits, episode.query_y[t])
        loss.backward()
        loss_sum += loss.item()
        acc_sum += (logits.argmax(-1) == episode.query_y[t]).float().mean().item()
    for p in maml.parameters():
        p.grad.data.mul_(1.0 / tasks)
    return loss_sum / tasks, acc_sum / tasks


def compare_gradients(data_root: str | None) -> dict:
    l2l = import_l2l_maml()
    dataset = omniglot("train", data_root)
    episode = TaskSampler(dataset, 5, 1, 5, seed=0).sample(8).to("cpu", torch.float64)
    out = {}
    for init in ("ours", "learn2learn"):
        torch.manual_seed(0)
        model = Conv4(5).double()
        if init == "learn2learn":
            l2l_init_(model)
        grads = {}
        for name, reference in (("ours fast", False), ("ours reference", True)):
            net = Conv4(5).double()
            net.load_state_dict(model.state_dict())
            MAML(net, MAMLConfig(first_order=True, reference=reference)).training_gradient(episode)
            grads[name] = torch.cat([p.grad.flatten() for p in net.meta_parameters()])
        maml = l2l.MAML(standard_conv4(model), lr=0.4, first_order=True)
        l2l_step(maml, episode)
        grads["learn2learn"] = torch.cat([p.grad.flatten() for p in maml.parameters()])
        # the formula: grad of the query loss at phi = theta - lr * grad support loss (phi detached from theta)
        formula = []
        for t in range(episode.num_tasks):
            theta = [p.detach().clone().requires_grad_() for p in model.meta_parameters()]
            support = F.cross_entropy(model(episode.support_x[t], theta), episode.support_y[t])
            phi = [(p - 0.4 * g).detach().requires_grad_()
                   for p, g in zip(theta, torch.autograd.grad(support, theta), strict=True)]
            query = F.cross_entropy(model(episode.query_x[t], phi), episode.query_y[t])
            formula.append(torch.cat([g.flatten() for g in torch.autograd.grad(query, phi)]))
        grads["formula"] = torch.stack(formula).mean(0)
        net = Conv4(5).double()
        net.load_state_dict(model.state_dict())
        MAML(net, MAMLConfig(first_order=False, reference=True)).training_gradient(episode)
        second = torch.cat([p.grad.flatten() for p in net.meta_parameters()])
        ref = grads["formula"]
        out[init] = {name: float((g - ref).norm() / ref.norm()) for name, g in grads.items() if name != "formula"}
        out[init]["second-order vs first-order (relative difference)"] = float((second - ref).norm() / ref.norm())
        out[init]["cosine(second-order, first-order)"] = float(F.cosine_similarity(second, ref, dim=0))
    return out


def train(args: argparse.Namespace) -> dict:
    l2l = import_l2l_maml()
    dataset = omniglot("train", args.data_root)
    sampler = TaskSampler(dataset, 5, 1, args.query, seed=0)
    runs: dict[str, list[float]] = {}
    for init in args.inits.split(","):
        for impl in args.impls.split(","):
            torch.manual_seed(0)
            model = Conv4(5)
            if init == "learn2learn":
                l2l_init_(model)
            if impl == "learn2learn":
                maml = l2l.MAML(standard_conv4(model), lr=args.inner_lr, first_order=not args.second_order)
                optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)

                def step(episode, maml=maml):
                    return l2l_step(maml, episode, args.steps)[1]
            else:
                ours = MAML(model, MAMLConfig(inner_steps=args.steps, inner_lr=args.inner_lr,
                                              first_order=not args.second_order))
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

                def step(episode, ours=ours):
                    return ours.training_gradient(episode)["accuracy"]
            name = f"{impl} ({init} init)"
            accs, begin = [], time.perf_counter()
            for i in range(args.iters):
                optimizer.zero_grad()
                accs.append(step(sampler.sample(args.meta_batch, i)))
                optimizer.step()
                if (i + 1) % args.every == 0:
                    window = accs[-args.every:]
                    print(f"{name:28s} iter {i + 1:4d}  query acc after inner step {sum(window) / len(window):.3f}"
                          f"  ({time.perf_counter() - begin:.0f} s)", flush=True)
            runs[name] = accs
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("grad", "train"))
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--query", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--inits", default="ours,learn2learn")
    parser.add_argument("--impls", default="ours,learn2learn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = compare_gradients(args.data_root) if args.what == "grad" else train(args)
    if args.what == "grad":
        print(json.dumps(result, indent=1))
    tag = "fomaml_grad" if args.what == "grad" else f"fomaml_train_{'so' if args.second_order else 'fo'}"
    (args.out / f"{tag}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      "result": result}, indent=1))


if __name__ == "__main__":
    main()
