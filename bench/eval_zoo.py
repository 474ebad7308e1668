"""Evaluate every model-zoo checkpoint on its recipe's fixed test episodes; write JSON and a markdown table.

Usage: python bench/eval_zoo.py [--zoo zoo] [--episodes 600] [--out bench/out/zoo.json] [--only GLOB]
                                [--scores results/omniglot_episodes.json] [--set KEY=VALUE ...]
With --set, each checkpoint is scored under those evaluation overrides (as ``fewshot eval CKPT KEY=VALUE``, e.g.
``eval.way=5`` for a 20-way checkpoint), and its row and per-episode results name them.
With --scores, each checkpoint's per-episode results (correct queries per test episode) are merged into that file,
which tests/test_zoo.py reads: the committed scores give the committed figure, and a checkpoint re-scored on the
first of its episodes gives the same scores.
Also exports a run's best checkpoint into the zoo (weights + config, no optimizer state):
       python bench/eval_zoo.py --export runs/omniglot_5w1s_protonet
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fewshot.config import RunConfig, apply_overrides
from fewshot.engine.checkpoint import load_checkpoint, model_only, save_checkpoint
from fewshot.engine.experiment import build_experiment
from fewshot.engine.scoring import load_weights, score

PAPER = {  # Omniglot accuracies (%) as published: 5w1s, 5w5s, 20w1s, 20w5s
    "maml": {"5w1s": 98.7, "5w5s": 99.9, "20w1s": 95.8, "20w5s": 98.9},
    "fomaml": {"5w1s": 98.3, "5w5s": 99.2, "20w1s": 89.4, "20w5s": 97.9},
    "reptile": {"5w1s": 97.68, "5w5s": 99.48, "20w1s": 89.43, "20w5s": 97.12},
    "protonet": {"5w1s": 98.8, "5w5s": 99.7, "20w1s": 96.0, "20w5s": 98.9},
    "mamlpp": {"5w1s": 99.47, "5w5s": 99.85, "20w1s": 97.65, "20w5s": 99.33},
    "metasgd": {"5w1s": 99.53, "5w5s": 99.93},  # Li et al. 2017 (the 5-way cells)
}


def export(run_dir: Path, zoo: Path, which: str = "best") -> Path:
    """``fewshot export RUN --out zoo/<recipe>.safetensors``, the file named after the run's recipe."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / f"{which}.safetensors")
    out = zoo / f"{ckpt.config['name']}.safetensors"
    save_checkpoint(out, model_only(ckpt))
    return out


def correct_counts(per_episode: list[float], queries: int) -> dict:
    """Per-episode accuracies as whole numbers: correct queries out of ``queries`` in each episode (each accuracy
    must be such a fraction)."""
    correct = [round(score * queries) for score in per_episode]
    assert all(abs(c - s * queries) < 1e-3 for c, s in zip(correct, per_episode, strict=True))
    return {"queries": queries, "correct": correct}


def scores_key(checkpoint: str | Path, overrides: list[str]) -> str:
    """The name of a checkpoint's per-episode results: its stem, then the evaluation overrides it was scored under."""
    return " ".join([Path(checkpoint).stem, *overrides])


def evaluate_zoo(zoo: Path, episodes: int, root: str | None, only: str = "*", scores: dict | None = None,
                 overrides: list[str] | None = None) -> list[dict]:
    """One row per checkpoint; with ``scores``, each checkpoint's per-episode results are stored there by name."""
    rows = []
    overrides = overrides or []
    for path in sorted(zoo.glob(f"{only}.safetensors")):
        ckpt = load_checkpoint(path)
        config = RunConfig.from_dict(apply_overrides(ckpt.config, overrides))
        experiment = build_experiment(config, root)
        load_weights(experiment.method, ckpt.weights, path)
        start = time.perf_counter()
        result = score(experiment, episodes=episodes)
        cell = f"{config.eval.way}w{config.eval.shot}s"
        if scores is not None:
            scores[scores_key(path, overrides)] = correct_counts(result.per_episode, result.way * result.query)
        named = config.name.rsplit("_", 1)[-1]  # MAML++ and Meta-SGD are MAML with options: the recipe names them
        variant = ("fomaml" if config.method.options.get("first_order") else
                   named if named in ("mamlpp", "metasgd") else config.method.name)
        rows.append({"checkpoint": str(path), "recipe": config.name, **({"overrides": overrides} if overrides else {}),
                     "method": variant, "cell": cell,
                     "accuracy": result.accuracy, "ci95": result.ci95, "interval": "student_t",
                     "episodes": result.episodes,
                     "iterations": ckpt.iteration, "train_wall_seconds": ckpt.extra.get("wall_seconds"),
                     "paper": PAPER.get(variant, {}).get(cell), "eval_seconds": time.perf_counter() - start})
        print(f"| {config.name} | {100 * result.accuracy:.2f} ± {100 * result.ci95:.2f} | {rows[-1]['paper']} | "
              f"{ckpt.iteration} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=Path("zoo"))
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--data-root")
    parser.add_argument("--out", type=Path, default=Path("bench/out/zoo.json"))
    parser.add_argument("--export", type=Path, nargs="*", help="run folders to export into the zoo first")
    parser.add_argument("--only", default="*", help="evaluate only the checkpoints whose stem matches this glob")
    parser.add_argument("--scores", type=Path, help="merge each checkpoint's per-episode results into this JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an evaluation override for every checkpoint, e.g. eval.way=5 (repeatable)")
    args = parser.parse_args()
    for run in args.export or []:
        print("exported", export(run, args.zoo))
    scores = json.loads(args.scores.read_text()) if args.scores and args.scores.exists() else {}
    rows = evaluate_zoo(args.zoo, args.episodes, args.data_root, args.only, scores if args.scores else None,
                        args.overrides)
    if args.scores:
        lines = [f"  {json.dumps(name)}: {json.dumps(scores[name])}" for name in sorted(scores)]
        args.scores.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "interval": "student_t",  # ci95 = t(0.975, n - 1) s / sqrt(n)
                                    "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
