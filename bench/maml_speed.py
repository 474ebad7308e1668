"""Meta-training speed and memory: our MAML / FOMAML / Reptile against learn2learn, higher and TorchOpt.

One run measures every (case, implementation) pair, interleaved: each round runs all of them once, in an order that
rotates from round to round, each in a fresh subprocess (so its peak RSS is its own), with the same thread count, the
same Conv-4 initialisation (seed 0) and the same pre-sampled real Omniglot tasks. Figures are medians over rounds.

    scripts/setup_bench.sh                       # installs the peers from PyPI into .venv
    python bench/maml_speed.py                   # all cases, 5 rounds -> bench/out/maml_speed.{json,md}
    python bench/maml_speed.py --cases 5w1s-maml-1 --repeats 3 --iters 2

Each worker times ``--iters`` meta-training iterations (meta-gradient + outer optimiser step) after ``--warmup``
untimed ones, and reports it/s, tasks/s, its peak RSS (``VmHWM``) and the RSS it started the first iteration with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import Case, make_step, versions  # noqa: E402
from fewshot.data.tasks import Episode  # noqa: E402


@dataclass(frozen=True)
class Setting:
    """A benchmark case: tasks (way, shot, queries, meta-batch), the algorithm, and who runs it."""

    way: int
    shot: int
    query: int
    meta_batch: int
    case: Case
    variants: tuple[str, ...]
    baseline: str = "learn2learn"


SECOND_ORDER = ("ours", "ours:4", "ours:2", "ours-reference", "learn2learn", "higher", "torchopt")
"""``ours`` is the default fast path (8 tasks batched); ``ours:4`` and ``ours:2`` batch fewer tasks, for less memory."""
CASES: dict[str, Setting] = {
    "5w1s-maml-1": Setting(5, 1, 5, 32, Case("maml", 1), SECOND_ORDER),
    "5w1s-maml-5": Setting(5, 1, 5, 32, Case("maml", 5), SECOND_ORDER),
    "5w1s-fomaml-1": Setting(5, 1, 5, 32, Case("fomaml", 1),
                             ("ours", "ours:4", "ours:2", "ours-reference", "learn2learn")),
    "5w1s-reptile-5": Setting(5, 1, 5, 32, Case("reptile", 5, inner_lr=1e-3, outer_lr=1.0),
                              ("ours", "ours-reference", "plain-reptile"), baseline="plain-reptile"),
    "20w1s-maml-5": Setting(20, 1, 5, 16, Case("maml", 5), SECOND_ORDER),
}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's own peak RSS (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec into it.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_file(out: Path, setting: Setting, count: int, data_root: str | None) -> Path:
    """Pre-sampled real Omniglot (MAML split, train) tasks as uint8, shared by every worker."""
    path = out / f"tasks_{setting.way}w{setting.shot}s_q{setting.query}_mb{setting.meta_batch}_n{count}.pt"
    if path.exists():
        return path
    from fewshot.data.omniglot import omniglot
    from fewshot.data.tasks import TaskSampler

    dataset = omniglot("train", data_root)
    dataset.scale = None  # keep uint8
    sampler = TaskSampler(dataset, setting.way, setting.shot, setting.query, seed=0)
    episodes = [sampler.sample(setting.meta_batch, i) for i in range(count)]
    torch.save([{k: getattr(e, k) for k in ("support_x", "support_y", "query_x", "query_y", "classes")}
                for e in episodes], path)
    return path


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    setting = CASES[args.case]
    raw = torch.load(args.tasks)
    episodes = [Episode(e["support_x"].float().div_(255), e["support_y"], e["query_x"].float().div_(255),
                        e["query_y"], e["classes"]) for e in raw]
    del raw
    from fewshot.models.conv4 import Conv4

    torch.manual_seed(0)
    model = Conv4(setting.way)
    step = make_step(args.variant, model, setting.case)
    torch.manual_seed(1)
    start_rss = rss_mib()
    losses = [step(episodes[i % len(episodes)]) for i in range(args.warmup)]
    begin = time.perf_counter()
    for i in range(args.iters):
        losses.append(step(episodes[(args.warmup + i) % len(episodes)]))
    elapsed = time.perf_counter() - begin
    peak = peak_rss_mib()
    print(json.dumps({
        "case": args.case, "variant": args.variant, "iters": args.iters, "seconds": elapsed,
        "it_s": args.iters / elapsed, "tasks_s": args.iters * setting.meta_batch / elapsed,
        "peak_rss_mib": peak, "start_rss_mib": start_rss, "losses": losses, "threads": torch.get_num_threads(),
    }))


def run_worker(args: argparse.Namespace, case: str, variant: str, tasks: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--case", case, "--variant", variant,
           "--tasks", str(tasks), "--iters", str(args.iters), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.preload:
        env["LD_PRELOAD"] = args.preload
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    if done.returncode != 0:
        return {"case": case, "variant": variant, "error": done.stderr[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def summarise(results: list[dict], cases: list[str]) -> list[dict]:
    rows = []
    for case in cases:
        setting = CASES[case]
        base = None
        ran = dict.fromkeys(r["variant"] for r in results if r["case"] == case)
        for variant in [v for v in setting.variants if v in ran] + [v for v in ran if v not in setting.variants]:
            runs = [r for r in results if r["case"] == case and r["variant"] == variant and "error" not in r]
            if not runs:
                rows.append({"case": case, "variant": variant, "runs": 0})
                continue
            its = [r["it_s"] for r in runs]
            row = {
                "case": case, "variant": variant, "runs": len(runs),
                "it_s": statistics.median(its), "it_s_min": min(its), "it_s_max": max(its),
                "tasks_s": statistics.median(r["tasks_s"] for r in runs),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                "delta_rss_mib": statistics.median(r["peak_rss_mib"] - r["start_rss_mib"] for r in runs),
                "first_loss": runs[0]["losses"][0],
            }
            if variant == setting.baseline:
                base = row
            rows.append(row)
        for row in rows:
            if row["case"] == case and base is not None and row.get("runs"):
                row["ratio"] = row["it_s"] / base["it_s"]
                row["baseline"] = setting.baseline
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; torch {meta['versions']['torch']}, {meta['threads']} threads"
        f"{', LD_PRELOAD=' + meta['preload'] if meta['preload'] else ''}; load average {meta['load_start']:.2f} at "
        f"start, {meta['load_end']:.2f} at end; median of {meta['repeats']} interleaved rounds, {meta['iters']} timed "
        f"iterations after {meta['warmup']} warm-up each, every run in a fresh process.",
        "",
        "| case | implementation | it/s | (min–max) | tasks/s | peak RSS MiB | Δ RSS MiB | × baseline | first loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("runs"):
            lines.append(f"| {r['case']} | {r['variant']} | failed | | | | | | |")
            continue
        ratio = f"{r['ratio']:.2f}× {r['baseline']}" if "ratio" in r else ""
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['it_s']:.3f} | {r['it_s_min']:.3f}–{r['it_s_max']:.3f} | "
            f"{r['tasks_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['delta_rss_mib']:.0f} | {ratio} | "
            f"{r['first_loss']:.5f} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    from fewshot.hardware import cpuinfo_value

    model = cpuinfo_value(("model name",)) or platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--variants", default="",
                        help="comma-separated implementations (default: the case's list); also ours-bf16, ours:N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preload", default="", help="a malloc to LD_PRELOAD into every worker (e.g. jemalloc)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--tag", default="maml_speed", help="output file stem")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    only = [v for v in args.variants.split(",") if v]  # may name variants outside a case's list (ours-bf16)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for case in cases:
        tasks = task_file(args.out, CASES[case], args.warmup + args.iters, args.data_root)
        jobs += [(case, v, tasks) for v in (only or CASES[case].variants)]
    meta = {"machine": machine(), "versions": versions(), "threads": args.threads, "preload": args.preload,
            "repeats": args.repeats, "iters": args.iters, "warmup": args.warmup, "load_start": os.getloadavg()[0],
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results: list[dict] = []
    for round_ in range(args.repeats):
        shift = round_ * max(1, len(jobs) // args.repeats + 1) % len(jobs)
        for case, variant, tasks in jobs[shift:] + jobs[:shift]:
            result = run_worker(args, case, variant, tasks)
            results.append(result)
            if "error" in result:
                print(f"[{round_}] {case} {variant}: FAILED\n{result['error']}", file=sys.stderr, flush=True)
            else:
                print(f"[{round_}] {case:15s} {variant:15s} {result['it_s']:7.3f} it/s  "
                      f"peak {result['peak_rss_mib']:6.0f} MiB  load {result['load_before']:.2f}", flush=True)
    meta["load_end"] = os.getloadavg()[0]
    rows = summarise(results, cases)
    (args.out / f"{args.tag}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": results,
                                                            "cases": {c: asdict(CASES[c]) for c in cases}}, indent=1))
    table = markdown(rows, meta)
    (args.out / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
