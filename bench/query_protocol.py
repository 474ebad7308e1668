"""How many queries a test task has, and how they are normalised, moves a MAML-family Omniglot figure.

The MAML family's papers score a test task on few queries and normalise that query batch by its own batch
statistics (transductive batch norm): Finn et al.'s MAML code draws 2K images per class (K queries per class, K =
the shots), Nichol et al.'s Reptile code and Antoniou et al.'s MAML++ configs one query per class at every shot
count. Our table scores 15 queries per class. Each row here is exactly ``fewshot eval CKPT --episodes E --json
eval.query=Q method.transductive=T train.threads=1`` for Q in (1, K, 15) and T in (true, false): true, the query
batch's statistics (the recipes' setting); false, each query normalised beside the support set alone, so that its
answer does not depend on the other queries. A method without the option (ProtoNet: running statistics) is scored
at each Q only, a control.

The episodes are nested: Omniglot's classes all have 20 images, so the task sampler draws the same classes and
support images whatever the query count, and the Q queries of a class are the first Q of its 15. So each count is
compared with 15 on the same tasks (``comparisons``: the paired per-episode difference and its Student-t 95%
interval). Each row keeps its per-episode results (correct queries of ``queries`` in each episode), which
tests/test_query_protocol.py checks against a new scoring of the first episodes.

Usage:
  FEWSHOT_DATA=../shared/data python bench/query_protocol.py [--episodes 600] [--jobs 1] [--only NAME_OR_PATH ...]
      [--out results/query_protocol.json] [--reuse] [--table]
--out keeps its rows that this call does not score (other checkpoints or episode counts); --reuse takes the rows
already there with the same command instead of scoring them again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.* as the tests import it (run as a script, only bench/ is on the path)
BATCH_STATISTICS = ("maml", "reptile", "anil")
"""The methods whose test-time batch norm uses batch statistics (``method.transductive`` says which batch)."""
CONTROL = "omniglot_5w1s_protonet"
"""Running statistics: the query count cannot matter."""
OUR_QUERY = 15


def zoo_checkpoints() -> list[str]:
    """The Omniglot zoo checkpoints of the batch-statistics methods, then the control."""
    from fewshot.config import upgrade
    from fewshot.engine.checkpoint import load_checkpoint

    names = [path.stem for path in sorted((REPO / "zoo").glob("omniglot_*.safetensors"))
             if upgrade(load_checkpoint(path).config)["method"]["name"] in BATCH_STATISTICS]
    return [*names, CONTROL]


def checkpoint_path(name: str) -> str:
    """A zoo name (``omniglot_5w1s_maml``), a run folder (its best checkpoint) or a checkpoint path, as the rows
    name it (relative to the repository)."""
    path = Path(name) if "/" in name or name.endswith(".safetensors") else REPO / "zoo" / f"{name}.safetensors"
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def cells(names: list[str], episodes: int) -> list[dict]:
    from fewshot.config import upgrade
    from fewshot.engine.checkpoint import load_checkpoint

    out = []
    for name in names:
        path = checkpoint_path(name)
        config = upgrade(load_checkpoint(REPO / path).config)  # older zoo configs: transductive, as they evaluated
        shot = config["eval"]["shot"]
        has_option = "transductive" in (config["method"].get("options") or {})
        for query in sorted({1, shot, OUR_QUERY}):
            for transductive in ((True, False) if has_option else (None,)):
                out.append({"checkpoint": path, "shot": shot, "query": query, "transductive": transductive,
                            "episodes": episodes})
    return out


def overrides(cell: dict) -> list[str]:
    """The evaluation overrides of ``cell``'s ``fewshot eval``."""
    option = [] if cell["transductive"] is None else [f"method.transductive={str(cell['transductive']).lower()}"]
    return [f"eval.query={cell['query']}", *option, "train.threads=1"]


def command(cell: dict) -> str:
    return " ".join(["fewshot eval", cell["checkpoint"], "--episodes", str(cell["episodes"]), "--json",
                     *overrides(cell)])


def run_cell(cell: dict) -> dict:
    """One ``fewshot eval`` (as :func:`fewshot.cli.cmd_eval`)."""
    from bench.any_way import machine_name
    from bench.eval_zoo import correct_counts
    from fewshot.config import RunConfig, apply_overrides
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.scoring import load_weights, score

    path = REPO / cell["checkpoint"]
    ckpt = load_checkpoint(path)
    config = RunConfig.from_dict(apply_overrides(ckpt.config, overrides(cell)))
    config.train.use_threads()
    experiment = build_experiment(config, None)
    load_weights(experiment.method, ckpt.weights, path)
    start = time.perf_counter()
    result = score(experiment, episodes=cell["episodes"])
    seconds = time.perf_counter() - start
    row = {**cell, "recipe": config.name, "iteration": ckpt.iteration, "accuracy": result.accuracy,
           "ci95": result.ci95, "eval_seconds": round(seconds, 1), "machine": machine_name(), "command": command(cell),
           **correct_counts(result.per_episode, result.way * result.query)}
    print(f"{cell['checkpoint']} query {cell['query']} transductive {cell['transductive']}: "
          f"{100 * result.accuracy:.2f} ± {100 * result.ci95:.2f} ({seconds:.0f} s)", flush=True)
    return row


def paired(a: list[int], b: list[int], queries_a: int, queries_b: int) -> dict:
    """Mean over the episodes of ``a``'s accuracy minus ``b``'s (correct counts of the same tasks) and its Student-t
    95% half-width, as ``fewshot compare`` computes it."""
    from fewshot.engine.compare import paired as paired_difference

    if len(a) != len(b):
        raise ValueError(f"paired rows need the same episodes, got {len(a)} and {len(b)}")
    difference, ci95 = paired_difference([x / queries_a for x in a], [y / queries_b for y in b])
    return {"difference": difference, "ci95": ci95, "episodes": len(a)}


def comparisons(rows: list[dict]) -> list[dict]:
    """Each query count against 15 on the same tasks, per checkpoint and batch-norm setting."""
    by = {(r["checkpoint"], r["query"], r["transductive"]): r for r in rows}
    out = []
    for (ckpt, query, transductive), row in by.items():
        base = by.get((ckpt, OUR_QUERY, transductive))
        if query != OUR_QUERY and base is not None:
            out.append({"checkpoint": ckpt, "query": query, "transductive": transductive, "against": OUR_QUERY,
                        **paired(row["correct"], base["correct"], row["queries"], base["queries"])})
    return out


def table(out: dict) -> str:
    """Per checkpoint and query count: accuracy ± Student-t 95% interval with transductive batch norm, its paired
    difference from 15 queries per class, and each query scored alone."""
    rows = {(r["checkpoint"], r["query"], r["transductive"]): r for r in out["results"]}
    diffs = {(c["checkpoint"], c["query"], c["transductive"]): c for c in out["comparisons"]}
    lines = ["| checkpoint (iterations) | queries per class | transductive (%) | − 15 per class (points, paired) | "
             "each query alone (%) |", "|---|---|---|---|---|"]

    def figure(row: dict | None) -> str:
        return "—" if row is None else f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}"

    for ckpt in dict.fromkeys(r["checkpoint"] for r in out["results"]):
        mine = [r for r in out["results"] if r["checkpoint"] == ckpt]
        batch = mine[0]["transductive"] is not None
        name = f"{Path(ckpt).stem} ({mine[0]['iteration']:,})" + ("" if batch else ", running statistics")
        for query in sorted({r["query"] for r in mine}):
            key = (ckpt, query, True if batch else None)
            diff = diffs.get(key)
            paired_text = "" if diff is None else f"{100 * diff['difference']:+.2f} ± {100 * diff['ci95']:.2f}"
            lines.append(f"| {name} | {query} | {figure(rows.get(key))} | {paired_text} | "
                         f"{figure(rows.get((ckpt, query, False))) if batch else ''} |")
            name = ""
    return "\n".join(lines)


def dump(out: dict) -> str:
    """``out`` as JSON text, one line per comparison and per row (each row's per-episode counts on its line)."""
    head = json.dumps({k: v for k, v in out.items() if k not in ("comparisons", "results")}, indent=1)
    lists = [f' "{key}": [\n' + ",\n".join("  " + json.dumps(item) for item in out[key]) + "\n ]"
             for key in ("comparisons", "results")]
    return head[:-2] + ",\n" + ",\n".join(lists) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", nargs="*",
                        help="zoo names, run folders or checkpoint paths (default: the zoo's Omniglot checkpoints of "
                             "MAML, Reptile and ANIL, and ProtoNet 5-way 1-shot)")
    parser.add_argument("--reuse", action="store_true",
                        help="take the rows of --out with the same command instead of scoring them again (the "
                             "scores are deterministic on one machine)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "query_protocol.json")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    wanted = cells(args.only or zoo_checkpoints(), args.episodes)
    from bench.any_way import calls, cpus_note, machine_name

    written = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous = written.get("results", [])
    done = {r["command"]: r for r in previous} if args.reuse else {}
    todo = [c for c in wanted if command(c) not in done]
    start = time.perf_counter()
    with get_context("spawn").Pool(args.jobs) as pool:
        scored = {r["command"]: r for r in pool.imap(run_cell, todo)}
    order = {command(c): i for i, c in enumerate(wanted)}
    mine = sorted([done[c] for c in order if c in done] + list(scored.values()), key=lambda r: order[r["command"]])
    others = [r for r in previous if r["command"] not in order]  # rows of checkpoints or counts not asked for
    rows = others + mine
    import torch

    machines = sorted({r["machine"] for r in rows})
    call = {"command": f"python bench/query_protocol.py --episodes {args.episodes} --jobs {args.jobs}"
                       + (f" --only {' '.join(args.only)}" if args.only else "") + (" --reuse" if args.reuse else ""),
            "cpus": cpus_note(args.jobs), "machine": machine_name(), "cells_scored": len(todo),
            "wall_seconds": round(time.perf_counter() - start)}
    out = {"machine": machines[0] if len(machines) == 1 else "per row: " + "; ".join(machines),
           "torch": torch.__version__, "interval": "student_t", "calls": calls(written) + [call],
           "eval_seconds_all_rows": round(sum(r["eval_seconds"] for r in rows)),
           "comparisons": comparisons(rows), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(out))
    print(table(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
