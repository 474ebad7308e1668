"""ProtoNet's evaluation with each distinct image embedded once, against the backbone run over every task's own images.

Both score the same fixed test episodes of a zoo checkpoint (its recipe's way, shot, queries and seed, in chunks of
50 tasks, as ``fewshot eval`` scores them): ``ProtoNet.predict`` (the embedding cache of the weights, built anew for
each measurement, as one ``fewshot eval`` builds it) and ``Method.predict`` (each task's support set, then its
queries, through the backbone: how ProtoNet scored before). The tasks are drawn (their images gathered) first; the
seconds are those of ``predict`` alone. The rounds alternate which goes first. Each row gives the seconds per way,
the speed-up, both accuracies, how many queries the two answer differently (0: the same answers), and in how many
episodes the embed-once path's correct count differs from the committed one (``results/omniglot_episodes.json``,
scored task by task before; ``null`` when fewer episodes are scored).

Usage:
  FEWSHOT_DATA=../shared/data python bench/protonet_eval.py [--episodes 600] [--rounds 2] [--threads 2]
      [--only omniglot_20w5s_protonet ...] [--out results/protonet_eval.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("omniglot_5w1s_protonet", "omniglot_5w5s_protonet", "omniglot_20w1s_protonet",
               "omniglot_20w1s_protonet_trainval", "omniglot_20w5s_protonet")
CHUNK = 50


def score(method, episodes: list, by_task: bool) -> tuple[float, torch.Tensor]:
    """Seconds to score the chunks of tasks ``episodes`` (drawn beforehand), and every query's predicted label."""
    from fewshot.methods.base import Method

    method.forget_caches()
    predict = (lambda e: Method.predict(method, e)) if by_task else method.predict
    answers = []
    start = time.perf_counter()
    for episode in episodes:
        answers.append(predict(episode).argmax(-1))
    seconds = time.perf_counter() - start
    method.end_evaluation()
    return seconds, torch.cat(answers)


def measure(name: str, episodes: int, rounds: int, root: str | None) -> dict:
    from fewshot.classify import load_model
    from fewshot.data.tasks import TaskSampler, episode_range
    from fewshot.engine.experiment import build_experiment

    method, config = load_model(REPO / "zoo" / f"{name}.safetensors", 0)
    method.eval()
    e = config.eval
    dataset = build_experiment(config, root).dataset(e.split)
    sampler = TaskSampler(dataset, e.way, e.shot, e.query, seed=e.seed)
    chunks = [episode_range(sampler, first, min(CHUNK, episodes - first)) for first in range(0, episodes, CHUNK)]
    labels = torch.cat([chunk.query_y for chunk in chunks])
    times: dict[str, list[float]] = {"once": [], "by_task": []}
    answers: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for r in range(rounds):
            for way in (("once", "by_task") if r % 2 == 0 else ("by_task", "once")):
                seconds, answers[way] = score(method, chunks, way == "by_task")
                times[way].append(round(seconds, 2))
    once, by_task = min(times["once"]), min(times["by_task"])
    committed = json.loads((REPO / "results" / "omniglot_episodes.json").read_text()).get(name)
    differing = None  # episodes whose correct count differs from the committed per-episode results of fewshot eval
    if committed is not None and len(committed["correct"]) == episodes:
        correct = (answers["once"] == labels).view(episodes, -1).sum(-1).tolist()
        differing = sum(a != b for a, b in zip(correct, committed["correct"], strict=True))
    return {"checkpoint": f"zoo/{name}.safetensors", "way": e.way, "shot": e.shot, "query": e.query,
            "episodes": episodes, "seconds_once": times["once"], "seconds_by_task": times["by_task"],
            "speedup": round(by_task / once, 2),
            "accuracy_once": round((answers["once"] == labels).float().mean().item(), 6),
            "accuracy_by_task": round((answers["by_task"] == labels).float().mean().item(), 6),
            "answers_differing": int((answers["once"] != answers["by_task"]).sum()),
            "episodes_differing_from_committed": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(CHECKPOINTS))
    parser.add_argument("--data-root")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "protonet_eval.json")
    args = parser.parse_args()
    from fewshot.hardware import machine

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.only:
        rows.append(measure(name, args.episodes, args.rounds, args.data_root))
        print(json.dumps(rows[-1]), flush=True)
    command = (f"python bench/protonet_eval.py --episodes {args.episodes} --rounds {args.rounds} --threads "
               f"{args.threads} --only {' '.join(args.only)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "machine": machine(), "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
