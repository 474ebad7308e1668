"""Text costs on this CPU: encoder throughput, and what one 5-way task costs with each method.

Throughput (sentences/s, real HWU64 test utterances): all-MiniLM-L6-v2 inference (batches of 64), a soft-prompt
forward + backward through MiniLM (25 sentences), SmolLM2-135M verbalizer scoring (batches of 16).

Cost per task: wall seconds of ``method.predict`` (adapt on the support set, score the 75 queries) on the first
fixed HWU64 test episodes, for each shipped recipe named by ``--methods`` at 1 and 5 shots; frozen features run
with the embedding cache off, so their figure includes embedding the task's sentences. ``--precisions fp32 bf16``
times each recipe with its text model's matrix products in float32 and in bfloat16 (``model.options.precision``).
Writes one JSON file::

    HF_HUB_OFFLINE=1 python bench/text_costs.py --threads 1 2 --out bench/out/text_costs.json
    HF_HUB_OFFLINE=1 python bench/text_costs.py --threads 2 --no-lm --methods prompt_smollm2 --precisions fp32 bf16 \
        --tasks 2 --out bench/out/text_precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from fewshot.config import load_config
from fewshot.data.tasks import fixed_episodes
from fewshot.data.text import text_dataset
from fewshot.engine.experiment import build_experiment
from fewshot.models.text import MiniLMEncoder, SmolLM2

METHODS = ("features_minilm", "ncm_minilm", "finetune_minilm", "prompt_random_minilm")


def rate(fn, n: int, repeat: int = 2) -> float:
    """Best sentences/s over ``repeat`` runs of ``fn`` (which processes ``n`` sentences)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def throughput(root: str, threads: int, sentences: int, lm_sentences: int, with_lm: bool) -> dict:
    torch.set_num_threads(threads)
    texts = text_dataset("hwu64", "test", root).flat()[0][:sentences]
    minilm = MiniLMEncoder()
    prompt = torch.zeros(4, minilm.embedding_dim, requires_grad=True)
    small = texts[:25]
    minilm.embed(texts[:16])
    out = {"threads": threads, "sentences": len(texts),
           "minilm_embed_batch64": rate(lambda: minilm.embed(texts), len(texts)),
           "minilm_prompt_fwd_bwd_25": rate(lambda: minilm.features(small, prompt).sum().backward(), len(small))}
    if with_lm:
        lm, few = SmolLM2(), texts[:lm_sentences]
        ids = lm.label_token_ids(["alarm set", "play music", "weather query", "iot cleaning", "news query"])

        def lm_score() -> None:
            with torch.no_grad():
                for i in range(0, len(few), 16):
                    lm.label_logits(few[i : i + 16], ids)

        out["smollm2_verbalizer_batch16"] = rate(lm_score, len(few), repeat=1)
    return out


def task_costs(root: str, threads: int, methods: list[str], tasks: int,
               precisions: list[str]) -> Iterator[dict]:
    """One row per recipe and precision, yielded as soon as it is measured."""
    for shot, name, precision in ((s, m, p) for s in (1, 5) for m in methods for p in precisions):
        overrides = [f"train.threads={threads}", f"model.options.precision={precision}"]
        overrides += ["method.cache=off"] if "features" in name or "ncm" in name else []
        config = load_config(f"hwu64_5w{shot}s_{name}", overrides)
        torch.set_num_threads(threads)
        experiment = build_experiment(config, root)
        method = experiment.method.eval()
        method.set_class_names(experiment.dataset("test").class_names)  # a verbalizer scores the test intents' names
        seconds = []
        for episode in fixed_episodes(experiment.dataset("test"), 5, shot, 15, tasks, seed=0, chunk=1):
            start = time.perf_counter()
            method.predict(episode)
            seconds.append(time.perf_counter() - start)
        row = {"recipe": config.name, "shot": shot, "threads": threads, "precision": precision,
               "tasks": tasks, "seconds_per_task_median": statistics.median(seconds), "seconds": seconds}
        print(json.dumps(row), flush=True)
        yield row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--lm-sentences", type=int, default=32)
    parser.add_argument("--no-lm", action="store_true")
    parser.add_argument("--methods", default=",".join(METHODS), help="recipe suffixes to time per task")
    parser.add_argument("--tasks", type=int, default=3, help="fixed test episodes timed per method")
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/text_costs.json"))
    args = parser.parse_args()
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "load_start": os.getloadavg()[0],
              "throughput": [], "per_task": []}
    for threads in args.threads:
        result["throughput"].append(throughput(args.data_root, threads, args.sentences, args.lm_sentences,
                                               not args.no_lm))
        print(json.dumps(result["throughput"][-1]), flush=True)
    methods = [m for m in args.methods.split(",") if m]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for threads in args.threads:  # the file is rewritten after every row: a run cut short keeps what it measured
        for row in task_costs(args.data_root, threads, methods, args.tasks, args.precisions):
            result["per_task"].append(row)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    result["load_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
