"""SmolLM2 prompt tuning: one tuning step on 25 support texts in length-sorted chunks against one padded batch.

A 5-way 5-shot support set holds 25 texts of very different lengths (BANKING77: 12 to 85 tokens with the
template); in one left-padded batch most positions are padding. ``SmolLM2.last_hidden`` splits texts into even chunks
of at most ``batch_size`` sorted by length (25 texts: 13 + 12), with or without gradients. This times the forward and
backward of the verbalizer loss with respect to a 4-vector soft prompt, both ways, on the first fixed test episodes,
and checks that the two gradients agree. Writes one JSON file::

    HF_HUB_OFFLINE=1 python bench/smollm2_chunks.py --data banking77 --precision bf16 --tasks 5 \
        --out bench/out/smollm2_chunks_banking77.json
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

from fewshot.data.tasks import fixed_episodes
from fewshot.data.text import text_dataset
from fewshot.methods.prompt import initial_prompt
from fewshot.models.text import SmolLM2


def step_seconds(model: SmolLM2, texts: list[str], y: torch.Tensor, ids: list[list[int]], prompt: torch.Tensor,
                 batch_size: int, repeat: int) -> tuple[float, torch.Tensor]:
    """Best wall seconds of one forward + backward, and the prompt's gradient."""
    model.batch_size = batch_size
    best, grad = float("inf"), None
    for _ in range(repeat):
        p = prompt.clone().requires_grad_()
        start = time.perf_counter()
        F.cross_entropy(model.label_logits(texts, ids, p), y).backward()
        best = min(best, time.perf_counter() - start)
        grad = p.grad
    return best, grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA", "../shared/data"))
    parser.add_argument("--data", default="banking77", choices=["banking77", "clinc150", "hwu64"])
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/smollm2_chunks.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SmolLM2(precision=args.precision).requires_grad_(False)
    data = text_dataset(args.data, "test", args.data_root)
    prompt = initial_prompt(model.word_embeddings(), 4, "vocab", 0)
    rows = []
    for episode in fixed_episodes(data, 5, args.shot, 15, args.tasks, seed=0, chunk=1):
        texts, y = episode.support_x[0], episode.support_y[0]
        ids = model.label_token_ids([data.class_names[c] for c in episode.classes[0].tolist()])
        one, g_one = step_seconds(model, texts, y, ids, prompt, len(texts), args.repeat)
        chunked, g_chunked = step_seconds(model, texts, y, ids, prompt, 16, args.repeat)
        rows.append({"one_batch_s": one, "chunks_s": chunked,
                     "grad_rel_diff": ((g_chunked - g_one).norm() / g_one.norm()).item()})
        print(json.dumps(rows[-1]), flush=True)
    total_one, total_chunks = sum(r["one_batch_s"] for r in rows), sum(r["chunks_s"] for r in rows)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "data": args.data, "shot": args.shot,
              "precision": args.precision, "threads": args.threads, "tasks": rows,
              "one_batch_s_total": total_one, "chunks_s_total": total_chunks, "speedup": total_one / total_chunks}
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
