"""Our SetFit beside the ``setfit`` package (1.x) on the same fixed test tasks, same encoder, same settings.

For each of the first ``--episodes`` fixed 5-way test tasks: ours (recipe ``<data>_5w<K>s_setfit_minilm``) and
``setfit.Trainer`` (batch 16, 1 epoch, body rate 2e-5, oversampling, logistic regression head) each train on the
support set from all-MiniLM-L6-v2 and classify the 15 x 5 queries; the two alternate task by task, so load on the
machine falls on both alike. Records accuracy and wall seconds per task (encoder copy/load, pair training, head,
query scoring), and the paired accuracy difference. Writes one JSON file::

    HF_HUB_OFFLINE=1 python bench/setfit_peer.py --data banking77 --shot 1 --episodes 20 \\
        --out bench/out/setfit_peer_banking77_1s.json

Needs ``pip install setfit datasets`` (not a dependency of fewshot).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fewshot.config import load_config
from fewshot.data.tasks import fixed_episodes
from fewshot.engine.experiment import build_experiment
from fewshot.models.text import minilm_path


def mean_ci(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (1.96 * statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan"))


def peer_task(support_x: list[str], support_y: list[int], query_x: list[str], seed: int, workdir: str) -> list[int]:
    """setfit 1.x with the settings of our recipe; returns the predicted query labels."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(str(minilm_path()), device="cpu")
    args = TrainingArguments(output_dir=workdir, batch_size=16, num_epochs=1, body_learning_rate=2e-5,
                             sampling_strategy="oversampling", seed=seed, report_to="none", show_progress_bar=False)
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": support_x, "label": support_y})).train()
    return [int(p) for p in model.predict(query_x)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("FEWSHOT_DATA", "../shared/data"))
    parser.add_argument("--data", default="banking77", choices=["banking77", "clinc150", "hwu64"])
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="our encoder's matrix products (model.options.precision); setfit stays float32")
    parser.add_argument("--out", type=Path, default=Path("bench/out/setfit_peer.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    import setfit

    config = load_config(f"{args.data}_5w{args.shot}s_setfit_minilm",
                         [f"train.threads={args.threads}", f"model.options.precision={args.precision}"])
    experiment = build_experiment(config, args.data_root)
    ours = experiment.method.eval()
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for i, episode in enumerate(fixed_episodes(experiment.dataset("test"), 5, args.shot, 15, args.episodes,
                                                   seed=0, chunk=1)):
            x, y, qx, qy = episode.support_x[0], episode.support_y[0], episode.query_x[0], episode.query_y[0]
            start = time.perf_counter()
            logits = ours.adapt(x, y, 5)(qx)
            ours_s = time.perf_counter() - start
            ours_acc = (logits.argmax(-1) == qy).float().mean().item()
            start = time.perf_counter()
            predicted = peer_task(x, y.tolist(), qx, seed=i, workdir=workdir)
            peer_s = time.perf_counter() - start
            peer_acc = (torch.tensor(predicted) == qy).float().mean().item()
            rows.append({"episode": i, "ours_accuracy": ours_acc, "setfit_accuracy": peer_acc, "ours_seconds": ours_s,
                         "setfit_seconds": peer_s})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for key in ("ours_accuracy", "setfit_accuracy", "ours_seconds", "setfit_seconds"):
        summary[key] = mean_ci([r[key] for r in rows])
    summary["ours_minus_setfit_accuracy"] = mean_ci([r["ours_accuracy"] - r["setfit_accuracy"] for r in rows])
    summary["median_seconds"] = {k: statistics.median(r[k] for r in rows) for k in ("ours_seconds", "setfit_seconds")}
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "setfit": setfit.__version__,
              "torch": torch.__version__, "threads": args.threads, "precision": args.precision, "data": args.data,
              "shot": args.shot,
              "load_start": load_start, "load_end": os.getloadavg()[0], "summary": summary, "episodes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
