"""How far MAML on Omniglot is from this machine's ceiling: FLOPs per meta-iteration against the FLOP rates the
machine reaches on plain, large work.

Per case it counts the floating-point operations of one learn2learn meta-iteration (torch's ``FlopCounterMode``:
convolutions and matrix products, the arithmetic that matters). Every implementation in the benchmark does this same
arithmetic (the same convolutions on the same images), so it is the work of one iteration for all of them. ``ours``
is not counted separately: ``FlopCounterMode`` over-counts the weight gradient of a grouped convolution by the
number of groups (checked: 8 groups, 4.5x the sum over a per-task loop), and our fast path uses grouped convolutions.

Then, with the same thread count, two reference rates:

* ``gemm``: a 2048x2048 matrix product, fp32 and bf16 (the machine's practical peak);
* ``conv4_batch``: one forward + backward of the Conv-4 over all the meta-batch's images in one batch with shared
  weights (same kernels as MAML, the largest batch, no per-task work), fp32 and bf16 autocast.

With ``--speed`` (a ``bench/maml_speed.py`` JSON) it turns each implementation's it/s into GFLOP/s and fractions of
those rates, and says what rate ``--target``x learn2learn would need.

    python bench/ceiling.py --threads 2 --speed bench/out/full/maml_speed.json --out bench/out/full/ceiling.json
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
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench.maml_speed import CASES, machine  # noqa: E402
from bench.peers import make_step  # noqa: E402
from fewshot.data.tasks import Episode  # noqa: E402
from fewshot.models.conv4 import Conv4  # noqa: E402


def random_episode(way: int, shot: int, query: int, tasks: int) -> Episode:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(way)
    support_y, query_y = labels.repeat_interleave(shot), labels.repeat_interleave(query)
    return Episode(torch.rand(tasks, way * shot, 28, 28, generator=g), support_y.repeat(tasks, 1),
                   torch.rand(tasks, way * query, 28, 28, generator=g), query_y.repeat(tasks, 1),
                   labels.repeat(tasks, 1))


def flops_per_iteration(case: str, variant: str = "learn2learn") -> int:
    setting = CASES[case]
    torch.manual_seed(0)
    step = make_step(variant, Conv4(setting.way), setting.case)
    episode = random_episode(setting.way, setting.shot, setting.query, setting.meta_batch)
    step(episode)  # warm-up outside the counter
    counter = FlopCounterMode(display=False)
    with counter:
        step(episode)
    return counter.get_total_flops()


def best_rate(fn, flops: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return flops / min(times)


def gemm_rate(repeats: int, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return best_rate(lambda: a @ b, 2 * 2048**3, repeats)


def conv4_batch_rate(images: int, way: int, repeats: int, dtype: torch.dtype = torch.float32) -> tuple[float, int]:
    """FLOP/s of one plain forward + backward of Conv-4 over ``images`` images (per-batch batch norm)."""
    torch.manual_seed(0)
    model = Conv4(way)
    x, y = torch.rand(images, 1, 28, 28), torch.randint(0, way, (images,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    return best_rate(step, flops, repeats), flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="5w1s-maml-1,5w1s-maml-5,5w1s-fomaml-1,20w1s-maml-5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed", type=Path, help="a bench/maml_speed.py JSON with the measured it/s")
    parser.add_argument("--target", type=float, default=3.0, help="speed-up over learn2learn to size (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ceiling.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    speed = json.loads(args.speed.read_text())["summary"] if args.speed else []
    result: dict = {"machine": machine(), "torch": torch.__version__, "threads": args.threads,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "load_start": os.getloadavg()[0], "rates": {}, "cases": {}}
    gemm = gemm_rate(args.repeats)
    result["rates"] = {"gemm_fp32_gflops": gemm / 1e9,
                       "gemm_bf16_gflops": gemm_rate(args.repeats, torch.bfloat16) / 1e9}
    for case in args.cases.split(","):
        setting = CASES[case]
        images = setting.meta_batch * setting.way * (setting.shot + setting.query)
        batch, _ = conv4_batch_rate(images, setting.way, args.repeats)
        batch_bf16, _ = conv4_batch_rate(images, setting.way, args.repeats, torch.bfloat16)
        flops = flops_per_iteration(case)
        row: dict = {"gflop_per_iteration": flops / 1e9, "images_per_iteration": images,
                     "conv4_batch_fp32_gflops": batch / 1e9, "conv4_batch_bf16_gflops": batch_bf16 / 1e9,
                     "implementations": {}}
        for measured in (r for r in speed if r["case"] == case and r.get("runs")):
            rate = measured["it_s"] * flops
            row["implementations"][measured["variant"]] = {
                "it_s": measured["it_s"], "gflops": rate / 1e9, "of_gemm_fp32": rate / gemm,
                "of_conv4_batch_fp32": rate / batch}
            if measured["variant"] == "learn2learn":
                need = args.target * rate
                row["target"] = {"speedup": args.target, "gflops_needed": need / 1e9, "of_gemm_fp32": need / gemm,
                                 "of_conv4_batch_fp32": need / batch, "of_conv4_batch_bf16": need / batch_bf16}
        result["cases"][case] = row
        print(case, json.dumps(row, indent=1), flush=True)
    result["load_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["rates"]))


if __name__ == "__main__":
    main()
