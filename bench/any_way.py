"""5-way zoo checkpoints (MAML and its variants, Reptile, ANIL) scored on 20-way and 3-way Omniglot tasks, per
output-layer initialisation.

Every cell is exactly ``fewshot eval CKPT --episodes E --json eval.way=W eval.shot=S method.head_init=I
train.threads=1`` (the same ``score``, the fixed test episodes from ``eval.seed``), run in this process so that the
per-episode scores are kept: each pair of inits is compared on the same episodes (the paired difference and its
Student-t 95% interval). Also: at the trained way (5-way, the checkpoint's own shot), the trained head against the
prototype one; and on fewer classes (3-way, the checkpoint's own shot), the trained head's first rows against the
prototype one.

Usage:
  FEWSHOT_DATA=../shared/data python bench/any_way.py [--episodes 600] [--maml-episodes 100] [--jobs 2]
      [--out results/any_way.json] [--only omniglot_5w1s_anil] [--kinds fewer] [--reuse] [--table]
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("omniglot_5w1s_maml", "omniglot_5w5s_maml", "omniglot_5w1s_fomaml", "omniglot_5w5s_fomaml",
               "omniglot_5w1s_mamlpp", "omniglot_5w1s_metasgd", "omniglot_5w1s_reptile",
               "omniglot_5w1s_reptile_shared", "omniglot_5w1s_anil", "omniglot_5w5s_anil")
DEFAULT = ("omniglot_5w1s_maml", "omniglot_5w5s_maml", "omniglot_5w1s_reptile", "omniglot_5w1s_anil",
           "omniglot_5w5s_anil")
"""The checkpoints of a run without ``--only`` (the table orders rows by :data:`CHECKPOINTS`)."""
OTHER_WAY = 20
OTHER_INITS = ("zeros", "prototypes")
SAME_WAY_INITS = ("trained", "prototypes")
FEWER_WAY = 3
FEWER_INITS = ("rows", "prototypes")
KINDS = ("other", "same", "fewer")
"""Cells per checkpoint: 20-way at 1 and 5 shots, the trained way, and fewer classes (3-way) at its own shot."""


def cells(names: list[str], episodes: int, maml_episodes: int, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    from fewshot.defaults import zoo_cell

    out = []
    for name in names:
        own_shot = zoo_cell(name)[1]
        zoo = f"zoo/{name}.safetensors"
        if "other" in kinds:
            for shot in (1, 5):
                n = maml_episodes if name.endswith("_maml") and shot == 5 else episodes
                for init in OTHER_INITS:
                    out.append({"checkpoint": zoo, "way": OTHER_WAY, "shot": shot, "init": init, "episodes": n})
        for kind, way, inits in (("same", 5, SAME_WAY_INITS), ("fewer", FEWER_WAY, FEWER_INITS)):
            if kind in kinds:
                out += [{"checkpoint": zoo, "way": way, "shot": own_shot, "init": init, "episodes": episodes}
                        for init in inits]
    return out


def command(cell: dict) -> str:
    return (f"fewshot eval {cell['checkpoint']} --episodes {cell['episodes']} --json eval.way={cell['way']} "
            f"eval.shot={cell['shot']} method.head_init={cell['init']} train.threads=1")


def run_cell(cell: dict) -> dict:
    """One ``fewshot eval`` (as :func:`fewshot.cli.cmd_eval`), keeping the per-episode scores."""
    from fewshot.config import RunConfig, apply_overrides
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.scoring import load_weights, score

    path = REPO / cell["checkpoint"]
    ckpt = load_checkpoint(path)
    overrides = [f"eval.way={cell['way']}", f"eval.shot={cell['shot']}", f"method.head_init={cell['init']}",
                 "train.threads=1"]
    config = RunConfig.from_dict(apply_overrides(ckpt.config, overrides))
    config.train.use_threads()
    experiment = build_experiment(config, None)
    load_weights(experiment.method, ckpt.weights, path)
    start = time.perf_counter()
    result = score(experiment, path, cell["episodes"])
    seconds = time.perf_counter() - start
    row = {**cell, "method": config.method.name, "accuracy": result.accuracy, "ci95": result.ci95,
           "eval_seconds": round(seconds, 1), "machine": machine_name(), "command": command(cell),
           "per_episode": [round(s, 6) for s in result.per_episode]}
    print(f"{cell['checkpoint']} {cell['way']}w{cell['shot']}s {cell['init']}: {100 * result.accuracy:.2f} ± "
          f"{100 * result.ci95:.2f} ({cell['episodes']} episodes, {seconds:.0f} s)", flush=True)
    return row


def calls(previous: dict) -> list[dict]:
    """The calls that wrote ``previous`` (a results file), oldest first; a file from before calls were listed names
    only its last call, in its header."""
    if "calls" in previous:
        return list(previous["calls"])
    if "command" in previous:
        return [{key: previous[key] for key in ("command", "cpus", "wall_seconds", "wall_seconds_this_call")
                 if key in previous}]
    return []


def cpus_note(jobs: int) -> str:
    """How a call's evaluations ran, for its record: ``2 processes, 1 thread each``."""
    return f"{jobs} process{'es' if jobs > 1 else ''}, 1 thread each"


def machine_name() -> str:
    """This machine's CPU as the rows name it: the model name, and the x86 family and model where known."""
    from fewshot.hardware import machine

    found = machine()
    return ", ".join(part for part in (found["cpu"], found.get("cpu_generation")) if part)


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of ``a - b`` over the episodes both have (the same episodes) and its Student-t 95% half-width, as
    ``fewshot compare`` computes it."""
    from fewshot.engine.compare import paired as paired_difference

    difference, ci95 = paired_difference(a, b)
    return {"difference": difference, "ci95": ci95, "episodes": min(len(a), len(b))}


def comparisons(rows: list[dict]) -> list[dict]:
    by = {(r["checkpoint"], r["way"], r["shot"], r["init"]): r for r in rows}
    out = []
    for (ckpt, way, shot, init), row in sorted(by.items()):
        other = {"prototypes": {OTHER_WAY: "zeros", FEWER_WAY: "rows"}.get(way, "trained")}.get(init)
        if other and (ckpt, way, shot, other) in by:
            out.append({"checkpoint": ckpt, "way": way, "shot": shot, "a": init, "b": other,
                        **paired(row["per_episode"], by[(ckpt, way, shot, other)]["per_episode"])})
    return out


def table(out: dict) -> str:
    """The markdown table of ``results/omniglot.md``: accuracy ± Student-t 95% interval per checkpoint, way x shot
    and init, with the paired difference of the two inits on the same episodes."""
    rows = {(r["checkpoint"], r["way"], r["shot"], r["init"]): r for r in out["results"]}
    diffs = {(c["checkpoint"], c["way"], c["shot"]): c for c in out["comparisons"]}
    lines = ["| checkpoint | task | init A | init B | A (%) | B (%) | A − B (points, paired) | episodes |",
             "|---|---|---|---|---|---|---|---|"]
    for (ckpt, way, shot), c in sorted(diffs.items(), key=lambda kv: ((OTHER_WAY, 5, FEWER_WAY).index(kv[0][1]),
                                                                      CHECKPOINTS.index(Path(kv[0][0]).stem),
                                                                      kv[0][2])):
        a, b = rows[(ckpt, way, shot, c["a"])], rows[(ckpt, way, shot, c["b"])]
        lines.append(f"| {Path(ckpt).stem} | {way}-way {shot}-shot | {c['a']} | {c['b']} | "
                     f"{100 * a['accuracy']:.2f} ± {100 * a['ci95']:.2f} | {100 * b['accuracy']:.2f} ± "
                     f"{100 * b['ci95']:.2f} | {100 * c['difference']:+.2f} ± {100 * c['ci95']:.2f} | "
                     f"{c['episodes']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--maml-episodes", type=int, default=100,
                        help="episodes of MAML's 20-way 5-shot cells (about 3 s each on a shared 2-vCPU machine)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the cells of --out whose command is the same (the scores are deterministic); "
                             "cells this call does not ask for always stay")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(DEFAULT), choices=CHECKPOINTS)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS,
                        help="which cells: 20-way (other), the trained way (same), 3-way (fewer)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "any_way.json")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    todo = cells(args.only, args.episodes, args.maml_episodes, tuple(args.kinds))
    kept, previous = [], {}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        done = {r["command"]: {"machine": previous.get("machine"), **r} for r in previous["results"]}  # rows
        asked = {command(c) for c in todo}                                      # older than per-row machines
        kept = [row for cmd, row in done.items() if cmd not in asked]  # cells this call does not score stay
        if args.reuse:
            kept += [done[command(c)] for c in todo if command(c) in done]
            todo = [c for c in todo if command(c) not in done]
    todo.sort(key=lambda c: -(c["episodes"] * c["way"] * c["shot"] * (8 if "maml" in c["checkpoint"] else 1)))
    start = time.perf_counter()
    with get_context("spawn").Pool(args.jobs) as pool:
        rows = kept + list(pool.imap_unordered(run_cell, todo))
    import torch

    rows.sort(key=lambda r: (CHECKPOINTS.index(Path(r["checkpoint"]).stem), -r["way"], r["shot"], r["init"]))
    machines = sorted({r["machine"] for r in rows})
    call = {"command": "python bench/any_way.py " + " ".join(
                [f"--episodes {args.episodes}", f"--maml-episodes {args.maml_episodes}", f"--jobs {args.jobs}"]
                + ([f"--only {' '.join(args.only)}"] if args.only != list(DEFAULT) else [])
                + ([f"--kinds {' '.join(args.kinds)}"] if args.kinds != list(KINDS) else [])
                + (["--reuse"] if args.reuse else [])),
            "cpus": cpus_note(args.jobs), "machine": machine_name(),
            "cells_scored": len(todo), "wall_seconds": round(time.perf_counter() - start)}
    out = {"machine": machines[0] if len(machines) == 1 else "per row: " + "; ".join(machines),
           "torch": torch.__version__, "interval": "student_t", "calls": calls(previous) + [call],
           "eval_seconds_all_cells": round(sum(r["eval_seconds"] for r in rows)),
           "comparisons": comparisons(rows), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
