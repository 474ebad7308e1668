"""How many queries a test task has, and how they are normalised, moves a MAML-family Omniglot figure.

The MAML family's papers score a test task on K queries per class (K = the shots: Finn et al.'s MAML code draws
2K images per class, Nichol et al.'s Reptile code and Antoniou et al.'s MAML++ code one target per class at 1 shot)
and normalise that query batch by its own batch statistics (transductive batch norm). Our table scores 15 queries
per class. Each row here is exactly ``fewshot eval CKPT --episodes E --json eval.query=Q method.transductive=T
train.threads=1`` for Q in (K, 15) and T in (true, false): true, the query batch's statistics (the recipes'
setting); false, each query normalised beside the support set alone, so that its answer does not depend on the
other queries. A method without the option (ProtoNet: running statistics) is scored at both Q only, a control.
Each row keeps its per-episode results (correct queries of ``queries`` in each episode), which
tests/test_query_protocol.py checks against a new scoring of the first episodes.

Usage:
  FEWSHOT_DATA=../shared/data python bench/query_protocol.py [--episodes 600] [--jobs 1] [--only NAME_OR_PATH ...]
      [--out results/query_protocol.json] [--reuse] [--table]
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("omniglot_5w1s_maml", "omniglot_5w1s_fomaml", "omniglot_5w1s_mamlpp", "omniglot_5w5s_maml",
               "omniglot_5w1s_anil", "omniglot_5w1s_reptile_shared", "omniglot_5w1s_protonet")
OUR_QUERY = 15


def checkpoint_path(name: str) -> str:
    """A zoo name (``omniglot_5w1s_maml``) or a checkpoint path, as the rows name it (relative to the repository)."""
    path = Path(name) if name.endswith(".safetensors") else REPO / "zoo" / f"{name}.safetensors"
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
        has_option = "transductive" in config["method"].get("options", {})
        for query in sorted({shot, OUR_QUERY}):
            for transductive in ((True, False) if has_option else (None,)):
                out.append({"checkpoint": path, "shot": shot, "query": query, "transductive": transductive,
                            "episodes": episodes})
    return out


def command(cell: dict) -> str:
    option = "" if cell["transductive"] is None else f" method.transductive={str(cell['transductive']).lower()}"
    return (f"fewshot eval {cell['checkpoint']} --episodes {cell['episodes']} --json eval.query={cell['query']}"
            f"{option} train.threads=1")


def overrides(cell: dict) -> list[str]:
    return command(cell).split(" --json ")[1].split()


def run_cell(cell: dict) -> dict:
    """One ``fewshot eval`` (as :func:`fewshot.cli.cmd_eval`)."""
    from any_way import machine_name
    from eval_zoo import correct_counts

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


def table(out: dict) -> str:
    """Accuracy ± Student-t 95% interval per checkpoint, at 15 and at K queries per class, with and without
    transductive batch norm."""
    rows = {(r["checkpoint"], r["query"], r["transductive"]): r for r in out["results"]}
    lines = ["| checkpoint (iterations) | 15 per class, transductive | K per class, transductive | 15 per class, "
             "each query alone | K per class, each query alone |", "|---|---|---|---|---|"]

    def cell(key: tuple) -> str:
        row = rows.get(key)
        return "—" if row is None else f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}"

    for ckpt in dict.fromkeys(r["checkpoint"] for r in out["results"]):
        any_row = next(r for r in out["results"] if r["checkpoint"] == ckpt)
        shot, transductive = any_row["shot"], any_row["transductive"] is not None
        name = f"{Path(ckpt).stem} ({any_row['iteration']:,})"
        if transductive:
            lines.append(f"| {name} | {cell((ckpt, OUR_QUERY, True))} | {cell((ckpt, shot, True))} | "
                         f"{cell((ckpt, OUR_QUERY, False))} | {cell((ckpt, shot, False))} |")
        else:  # running statistics: no query batch to normalise by
            lines.append(f"| {name}, running statistics | {cell((ckpt, OUR_QUERY, None))} | "
                         f"{cell((ckpt, shot, None))} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(CHECKPOINTS),
                        help="zoo names or checkpoint paths (default: the MAML family's zoo checkpoints, ProtoNet)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the rows of --out whose command is the same (the scores are deterministic)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "query_protocol.json")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())))
        return
    todo = cells(args.only, args.episodes)
    previous = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    done = {r["command"]: r for r in previous} if args.reuse else {}
    kept = [r for r in previous if r["command"] in done]  # with --reuse, every earlier row stays
    todo = [c for c in todo if command(c) not in done]
    start = time.perf_counter()
    with get_context("spawn").Pool(args.jobs) as pool:
        rows = kept + list(pool.imap(run_cell, todo))
    import torch

    machines = sorted({r["machine"] for r in rows})
    out = {"machine": machines[0] if len(machines) == 1 else "per row: " + "; ".join(machines),
           "cpus": f"{args.jobs} processes, 1 thread each", "torch": torch.__version__, "interval": "student_t",
           "command": f"python bench/query_protocol.py --episodes {args.episodes} --jobs {args.jobs}",
           "wall_seconds": round(time.perf_counter() - start), "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
