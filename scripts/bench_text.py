"""Encoder throughput on this CPU: sentences/s of all-MiniLM-L6-v2 (inference; soft-prompt forward+backward) and
SmolLM2-135M (verbalizer inference), on real HWU64 test utterances. Prints one JSON line per measurement.

Run: ``HF_HUB_OFFLINE=1 python scripts/bench_text.py /work/shared/data --threads 1 2``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fewshot.data.text import text_dataset
from fewshot.models.text import MiniLMEncoder, SmolLM2


def rate(fn, n: int, repeat: int = 2) -> float:
    """Best sentences/s over ``repeat`` runs of ``fn`` (which processes ``n`` sentences)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--lm-sentences", type=int, default=32)
    parser.add_argument("--no-lm", action="store_true")
    args = parser.parse_args()
    texts = text_dataset("hwu64", "test", args.root).flat()[0][: args.sentences]
    minilm = MiniLMEncoder()
    lm = None if args.no_lm else SmolLM2()
    prompt = torch.zeros(4, minilm.embedding_dim, requires_grad=True)
    small, few = texts[:25], texts[: args.lm_sentences]
    ids = lm.label_token_ids(["alarm set", "play music", "weather query", "iot cleaning", "news query"]) if lm else []

    def prompt_step() -> None:
        minilm.features(small, prompt).sum().backward()

    def lm_score() -> None:
        with torch.no_grad():
            for i in range(0, len(few), 16):
                lm.label_logits(few[i : i + 16], ids)

    for threads in args.threads:
        torch.set_num_threads(threads)
        minilm.embed(texts[:16])
        out = {"threads": threads, "sentences": len(texts),
               "minilm_embed_batch64": rate(lambda: minilm.embed(texts), len(texts))}
        out["minilm_prompt_fwd_bwd_25"] = rate(prompt_step, len(small))
        if lm is not None:
            out["smollm2_verbalizer_batch16"] = rate(lm_score, len(few), repeat=1)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}), flush=True)


if __name__ == "__main__":
    main()
