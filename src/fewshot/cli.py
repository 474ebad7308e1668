"""The ``fewshot`` command line: list recipes, train, evaluate, classify your own examples."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn

from fewshot.errors import FewShotError

EPILOG = """examples:
  fewshot recipes
  fewshot train omniglot_5w1s_protonet train.iterations=2000 --out runs/proto
  fewshot train runs/proto --resume
  fewshot eval runs/proto --episodes 600 --json
  fewshot compare runs/proto runs/maml                # paired difference on the same test episodes
  fewshot report runs/proto --shots 1,5,10           # one HTML page: curves, accuracy vs shots, confusions
  fewshot classify runs/proto my_letters/ query1.png query2.png
  fewshot classify clinc150_5w1s_features_minilm intents.csv "book me a table for two"
  fewshot fit my_letters/ --out my_classifier          # adapt once (default model from our results), save
  fewshot predict my_classifier more_letters/ --out predictions.csv --top-k 3
  fewshot export my_classifier --onnx                  # my_classifier/model.onnx
data: --data-root or $FEWSHOT_DATA points at the folder holding omniglot/, clinc150/, ..."""


def main(argv: list[str] | None = None) -> int:
    try:  # the user's own components: --plugin FILE_OR_MODULE (anywhere, repeatable) and $FEWSHOT_PLUGINS
        from fewshot.registry import plugins_from_command_line

        argv = plugins_from_command_line(sys.argv[1:] if argv is None else list(argv))
    except FewShotError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides given after an option (`train RUN --resume k=v`) land here
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    terminate = _on_sigterm()
    try:
        return args.func(args)
    except FewShotError as exc:
        print(f"fewshot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SIGINT (Ctrl-C) or SIGTERM
        signum = getattr(exc, "signum", signal.SIGINT)
        kept = getattr(exc, "message", "") or "the last checkpoint is kept (continue with --resume)"
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"fewshot: {what}; {kept}", file=sys.stderr)
        return 128 + signum
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def entry_point() -> NoReturn:
    """The ``fewshot`` command and ``python -m fewshot``: :func:`main`, then the process ends with its exit status
    (a process of a ``torchrun`` job leaves its process group first: :func:`fewshot.engine.distributed.end_process`)."""
    code = main()
    distributed = sys.modules.get("fewshot.engine.distributed")  # imported only when a command ran a model
    if distributed is not None:
        distributed.end_process(code)
    sys.exit(code)


def _on_sigterm() -> object:
    """Make SIGTERM end the command like Ctrl-C (a clean line, exit 143) instead of killing it; the handler it
    replaces, to restore (``None`` outside the main thread)."""
    import threading

    from fewshot.errors import Interrupted

    def stop(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


class Parser(argparse.ArgumentParser):
    """Argument errors as every other error: one line, ``fewshot: error: ...``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fewshot: error: {message} (see `{self.prog} --help`)\n")


def _support_options(p: argparse.ArgumentParser) -> None:
    """How a support set is read (``classify`` and ``fit``): text columns, and the polarity of images."""
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--image-column", help="a saved Hugging Face data set's column of images (default: its one Image "
                                          "column, when it has no --text-column)")
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="for models trained on bright strokes on a dark background (Omniglot, MNIST): invert "
                        "dark-on-light images (auto: when the support looks so)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change the model's config before it adapts, as fewshot eval's overrides do (repeatable), "
                        "e.g. --set method.test_inner_steps=20 --set method.head_init=zeros")


def _version() -> str:
    from fewshot import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fewshot", description="Meta-learning and transfer learning from very few labelled examples.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fewshot {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("recipes", help="list the shipped recipes, one line each",
                       description="List the shipped YAML recipes with a one-line description each.")
    p.add_argument("--show", metavar="NAME", help="print one recipe's YAML")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("train", help="train a recipe or YAML file (resumable)",
                       description="Train a recipe (see `fewshot recipes`) or a YAML file. Overrides are dotted "
                                   "key=value pairs: train.meta_batch=16 method.inner_steps=5 (a key naming one "
                                   "field, like meta_batch=16, works too). The run folder gets config.yaml, "
                                   "metrics.jsonl/.csv, checkpoints/, curves.png, report.md and "
                                   "report.html (see `fewshot report`).")
    p.add_argument("recipe", help="recipe name, YAML path, or (with --resume) a run folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (or the given run folder); only "
                   "settings that leave the training computation as it was may differ (threads, device, how often to "
                   "validate, save and log, the budget with a constant or step schedule)")
    p.add_argument("--force", action="store_true", help="with --resume: continue even with other settings "
                   "(recorded in the run folder; the run is no longer one uninterrupted run of one config)")
    p.add_argument("--data-root", help="data folder (default $FEWSHOT_DATA)")
    p.add_argument("--no-test", action="store_true", help="skip the test-set evaluation after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-after", type=int, help="stop after this many iterations (resume later)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes of training (resume later)")
    p.add_argument("--mirror", type=Path, metavar="DIR",
                   help="keep a copy of the run folder in DIR, updated after every checkpoint (a disk or share that "
                        "outlives this machine; continue elsewhere with `fewshot train DIR --resume`)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run folder or checkpoint on fixed test episodes",
                       description="Evaluate a trained run (its best checkpoint) or a checkpoint file on the fixed, "
                                   "seeded test episodes; prints accuracy ± 95%% CI (N episodes).")
    p.add_argument("target", type=Path, help="run folder or .safetensors checkpoint")
    p.add_argument("--episodes", type=int, help="number of test episodes (default: the recipe's, 600)")
    p.add_argument("--split", help="split to evaluate (default test)")
    p.add_argument("--checkpoint", choices=("best", "last"), help="which checkpoint of a run folder (default best)")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="score the run folder's K best-validated checkpoints together (kept when it trains with "
                        "train.keep_best >= K): each adapts to a task, and the class of highest mean probability "
                        "(or --average logits: mean logit) is the answer")
    p.add_argument("--average", choices=("probabilities", "logits"),
                   help="with --ensemble: what is averaged over the checkpoints (default probabilities; MAML++'s "
                        "code averages logits)")
    p.add_argument("--data-root", help="data folder (default $FEWSHOT_DATA)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--per-episode", action="store_true",
                   help="with --json: also each episode's accuracy, in episode order (\"per_episode\"), e.g. for "
                        "a paired test against another model's scores on the same episodes")
    p.add_argument("--fresh", action="store_true",
                   help="score every episode again instead of continuing from the episodes already recorded in "
                        "<run>/checkpoints/eval/ (an interrupted evaluation of a run folder resumes by default)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="evaluation overrides, e.g. eval.way=20 eval.shot=5 (for methods without a fixed head)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="paired comparison of evaluated runs on the same test episodes",
                       description="Compare runs evaluated on the same fixed test episodes (same way, shot, query, "
                                   "seed and split): each run's accuracy, and its paired difference from the first "
                                   "run, episode by episode, with a 95%% CI. Reads the per-episode records that "
                                   "`fewshot eval` and `fewshot train` keep in <run>/checkpoints/eval/.")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or evaluation record files); the first is the "
                                                      "baseline")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object per run")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="write a run folder's report: one self-contained HTML page",
                       description="Write RUN/report.html (or --out): learning curves, test accuracy vs shots, "
                                   "per-episode accuracy, the most confused classes, the config and the environment; "
                                   "one file with its plots embedded. `fewshot train` writes it at the end of a run.")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, help="HTML file to write (default RUN/report.html); a file that is not a "
                                            "fewshot report is never overwritten")
    p.add_argument("--shots", help="comma-separated shot counts, e.g. 1,5,10: score the best checkpoint at those "
                                   "not yet recorded (kept in RUN/checkpoints/eval/, so a second call reuses them)")
    p.add_argument("--episodes", type=int, help="test episodes per shot count for --shots (default: the run's)")
    p.add_argument("--data-root", help="data folder for --shots (default $FEWSHOT_DATA)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("classify", help="classify your own examples from a few labelled ones",
                       description="Adapt a trained run (folder or checkpoint) or a pretrained recipe to YOUR labelled "
                                   "support set, then classify the queries. Images: SUPPORT is a folder "
                                   "SUPPORT/<class_name>/<images>, queries are image files or folders. Text: SUPPORT "
                                   "is a CSV with text and label columns, queries are sentences (or --queries-csv).")
    p.add_argument("model", help="run folder, .safetensors checkpoint, or a pretrained recipe name")
    p.add_argument("support", type=Path, help="folder of class folders (images) or .csv / .tsv / .jsonl (text)")
    p.add_argument("queries", nargs="*", help="image paths / folders, or sentences")
    p.add_argument("--queries-csv", type=Path,
                   help="read text queries from this CSV's (or .tsv / .jsonl file's) text column")
    _support_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per query")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("fit", help="adapt a model to your labelled examples once and save the classifier",
                       description="Adapt a model to YOUR labelled support set once and save the result as a "
                                   "classifier folder (weights, config.json, README.md model card). SUPPORT is a "
                                   "folder SUPPORT/<class_name>/<images>, a .csv / .tsv / .jsonl file of labelled "
                                   "text, or a Hugging Face data set saved with save_to_disk. Without --model, the "
                                   "model that scored best in our results at the support set's shot count (and, "
                                   "for images, its number of classes: 5-way figures up to 5, 20-way beyond) is "
                                   "used; the choice and its figure are printed, as is a given model's figure "
                                   "where our results measure it.")
    p.add_argument("support", type=Path, help="image folder, text file or saved Hugging Face data set")
    p.add_argument("--out", type=Path, required=True, help="classifier folder to write")
    p.add_argument("--model", help="run folder, .safetensors checkpoint (zoo/...), or a pretrained recipe")
    p.add_argument("--method", help="without --model: the best default model of this method (e.g. protonet, "
                                    "metaoptnet for images; features, finetune, setfit for text)")
    _support_options(p)
    p.add_argument("--force", action="store_true", help="replace a classifier already in --out")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="classify inputs with a saved classifier, as CSV",
                       description="Classify inputs with a classifier saved by `fewshot fit`: image files or folders, "
                                   "sentences, or .csv / .tsv / .jsonl files (their --text-column). Writes one CSV row "
                                   "per input: input, label, probability, then label_2, probability_2, ... for "
                                   "--top-k. Each input's answer is its own, whatever else is predicted with it.")
    p.add_argument("model", type=Path, help="classifier folder written by fewshot fit")
    p.add_argument("inputs", nargs="+", help="image files / folders, sentences, or text files")
    p.add_argument("--out", type=Path, help="CSV file to write (default: print to stdout)")
    p.add_argument("--top-k", type=int, default=1, help="also list the next K-1 labels and their probabilities")
    p.add_argument("--text-column", default="text", help="the column of text files that holds the inputs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained model (a run's) or a saved classifier (to ONNX)",
                       description="A run folder: `fewshot export RUN --out FILE.safetensors` writes its best (or "
                                   "--checkpoint last) model without optimizer or random state, for `fewshot eval "
                                   "FILE` and `fewshot fit --model FILE`. A classifier saved by `fewshot fit`: "
                                   "`--onnx` exports it to ONNX, output 'probabilities'. "
                                   "Images: input 'images' (prepared as its config.json's preprocessing says). Text "
                                   "(MiniLM): inputs 'input_ids' and 'attention_mask'; the tokenizer is in the file's "
                                   "metadata ('fewshot_tokenizer', a tokenizers JSON). onnxruntime's answers are "
                                   "checked against PyTorch's (<= 1e-4) before the file is written.")
    p.add_argument("model", type=Path, help="run folder (fewshot train) or classifier folder (fewshot fit)")
    p.add_argument("--onnx", action="store_true", help="export a classifier folder to ONNX")
    p.add_argument("--out", type=Path, help="file to write (a run: required, .safetensors; a classifier: default "
                                            "MODEL/model.onnx)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run to export (default best)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_export)
    return parser


def cmd_recipes(args: argparse.Namespace) -> int:
    from fewshot.recipes import recipe_names, recipe_path, recipe_summary

    if args.show:
        print(recipe_path(args.show).read_text(), end="")
        return 0
    names = recipe_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {recipe_summary(name)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot.config import RunConfig, apply_overrides, load_raw
    from fewshot.engine.distributed import launched_main
    from fewshot.engine.ensemble import check_keep_best
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.mirror import Mirror, check_mirror
    from fewshot.engine.run_folder import check_run_folder, check_run_name, lock_run_folder, read_run_config
    from fewshot.engine.train import test_best, train
    from fewshot.hashing import weights_sha256
    from fewshot.registry import EXPERIMENTS

    if args.stop_after is not None and args.stop_after < 1:
        raise FewShotError(f"--stop-after must be >= 1 (iterations to train before stopping), got {args.stop_after}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise FewShotError(f"--time-limit must be a positive number of minutes, got {args.time_limit}")
    source = Path(args.recipe)
    if source.is_dir():
        raw = read_run_config(source)
        if not args.resume:
            raise FewShotError(f"{source} is a run folder; pass --resume to continue it")
        run_dir = args.out or source
    else:
        raw = load_raw(args.recipe)
        run_dir = args.out or Path("runs") / check_run_name(str(raw.get("name", source.stem)))
    config = RunConfig.from_dict(apply_overrides(raw, args.overrides))
    check_keep_best(config.train.keep_best, EXPERIMENTS[config.experiment].builder(), config.experiment)
    main = launched_main()  # under torchrun rank 0 holds and checks the run folder
    with lock_run_folder(run_dir) if main else nullcontext():
        if main:
            check_run_folder(run_dir, args.resume)  # before building anything
            if args.mirror is not None:
                check_mirror(run_dir, args.mirror)
        experiment = build_experiment(config, args.data_root)
        result = train(experiment, run_dir, resume=args.resume, progress=not args.no_progress, force=args.force,
                       stop_after=args.stop_after, mirror=args.mirror,
                       time_limit=None if args.time_limit is None else 60 * args.time_limit)
        if main:
            print(f"run folder: {run_dir}")
        if main and result.best_val_iteration >= 0:
            print(f"best validation accuracy {100 * result.best_val_accuracy:.2f}% at iteration "
                  f"{result.best_val_iteration}")
        best_sha256 = None
        if not args.no_test and result.iterations == config.train.iterations:
            test = test_best(experiment, run_dir)
            best_sha256 = weights_sha256(experiment.method.state_dict())  # test_best loaded the best weights
            if main:
                print(f"test accuracy ({config.name}): {test}")
        _write_run_report(run_dir, best_sha256)
        if main and args.mirror is not None:
            Mirror(run_dir, args.mirror).sync_all()  # the test result and reports too
    return 0


def _write_run_report(run_dir: Path, best_sha256: str | None) -> None:
    """The HTML report at the end of ``fewshot train`` (rank 0); a problem with it is a note, not a failed run."""
    from fewshot.engine import distributed
    from fewshot.engine.report import write_report

    if not distributed.is_main():
        return
    try:
        print(f"report: {write_report(run_dir, note=_note, best_sha256=best_sha256)}")
    except (FewShotError, OSError) as exc:
        _note(f"no HTML report written: {exc}")


def _note(message: str) -> None:
    print(f"fewshot: note: {message}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from fewshot.engine.report import check_run_folder, score_shots, write_report

    check_run_folder(args.run)
    if args.shots:
        try:
            shots = [int(s) for s in args.shots.split(",") if s.strip()]
        except ValueError:
            raise FewShotError(f"--shots takes comma-separated counts like 1,5,10, got {args.shots!r}") from None
        score_shots(args.run, shots, args.episodes, args.data_root, progress=True, note=_note)
    print(write_report(args.run, args.out, note=_note))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fewshot.config import RunConfig, apply_overrides
    from fewshot.engine.checkpoint import load_checkpoint
    from fewshot.engine.experiment import build_experiment
    from fewshot.engine.scoring import load_weights, score

    if args.per_episode and not args.json:
        raise FewShotError("--per-episode adds each episode's accuracy to the JSON output: add --json")
    target = args.target
    if args.average and args.ensemble is None:
        raise FewShotError("--average says what --ensemble averages over its checkpoints: add --ensemble K")
    members = _ensemble_members(args) if args.ensemble is not None else []
    checkpoint = args.checkpoint or "best"
    path = target / "checkpoints" / f"{checkpoint}.safetensors" if target.is_dir() else target
    if target.is_dir() and not path.is_file() and not members:
        kept = sorted(p.stem for p in (target / "checkpoints").glob("*.safetensors"))
        raise FewShotError(f"{target} has no {checkpoint} checkpoint ({path}); it has "
                           f"{', '.join(kept) if kept else 'none'}")
    read = [load_checkpoint(member) for member in members]  # each member's file read once
    ckpt = read[0] if read else load_checkpoint(path)
    config = RunConfig.from_dict(apply_overrides(ckpt.config, args.overrides))
    config.train.use_threads()  # the run's thread count (or train.threads=N) also governs its evaluation
    experiment = build_experiment(config, args.data_root)
    if members:
        path = _ensemble(experiment, {m: c.weights for m, c in zip(members, read, strict=True)}, target,
                         args.average or "probabilities")
    else:
        load_weights(experiment.method, ckpt.weights, path)
    result = score(experiment, path, args.episodes, args.split, progress=not args.json, fresh=args.fresh)
    if args.json:
        answer = result.to_dict(per_episode=args.per_episode)
        which = ({"checkpoints": [str(m) for m in members], "average": args.average or "probabilities"} if members
                 else {"checkpoint": str(path)})
        print(json.dumps({**answer, "method": config.method.name, "recipe": config.name,
                          "split": args.split or config.eval.split, **which}))
    else:
        print(result)
    return 0


def _ensemble_members(args: argparse.Namespace) -> list[Path]:
    """The checkpoint files ``fewshot eval --ensemble K`` scores together (a clear error for what it cannot)."""
    from fewshot.engine.ensemble import top_checkpoints

    if not args.target.is_dir():
        raise FewShotError(f"--ensemble scores a run folder's kept best checkpoints; {args.target} is not a folder")
    if args.checkpoint:
        raise FewShotError(f"--ensemble scores the {args.ensemble} best checkpoints, not --checkpoint "
                           f"{args.checkpoint}: give one of the two")
    return top_checkpoints(args.target, args.ensemble)


def _ensemble(experiment: Any, members: dict[Path, dict[str, Any]], run_dir: Path, average: str) -> Path:
    """Put the ensemble of ``members`` (file -> its weights; averaging ``average``) in place of ``experiment``'s
    method; returns the path its scores are recorded under (``checkpoints/top<K>``, ``top<K>logits``)."""
    from fewshot.engine.ensemble import Ensemble, scores_ensembles
    from fewshot.engine.scoring import load_weights

    if not scores_ensembles(type(experiment)):
        raise FewShotError(f"--ensemble scores methods on test episodes; a {experiment.config.experiment} run is "
                           "scored another way")
    for member, weights in members.items():
        load_weights(experiment.method, weights, member)  # each fits the model, or one clear line
    experiment.method = Ensemble(experiment.method, list(members.values()), average)
    suffix = "" if average == "probabilities" else average
    return run_dir / "checkpoints" / f"top{len(members)}{suffix}.safetensors"


def _plus_minus(ci: float) -> str:
    return f" ± {100 * ci:.2f}" if ci == ci else " (one episode: no interval)"


def cmd_compare(args: argparse.Namespace) -> int:
    from fewshot.engine.compare import compare, load_scores

    rows = compare([load_scores(run, args.checkpoint, args.split) for run in args.runs])
    if args.json:
        for row in rows:  # an interval of one episode is undefined: null, not NaN (not JSON)
            print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in row.items()}))
        return 0
    first = rows[0]
    queries = f"{first['query']} {'query' if first['query'] == 1 else 'queries'} per class"
    print(f"{first['data']['name']}, {first['way']}-way {first['shot']}-shot, {queries}, "
          f"{first['split']} split, seed "
          f"{first['seed']}: {first['episodes']} episodes shared by all runs")
    labelled = any(r["settings"] != "as trained" for r in rows)  # a run scored under other settings: say which
    labels = [f"{r['run']} [{r['settings']}]" if labelled else r["run"] for r in rows]
    width = max(map(len, labels))
    for label, row in zip(labels, rows):
        line = f"{label:<{width}}  {100 * row['accuracy']:6.2f}{_plus_minus(row['ci95'])}"
        if "difference" in row:
            line += f"   {100 * row['difference']:+.2f}{_plus_minus(row['difference_ci95'])} vs {labels[0]}"
        print(line)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from fewshot.classify import classify, read_queries

    queries = list(args.queries)
    if args.queries_csv:
        queries += read_queries(args.queries_csv, args.text_column)
    predictions = classify(args.model, args.support, queries, args.text_column, args.label_column, args.invert,
                           image_column=args.image_column, overrides=args.settings,
                           notes=lambda message: print(f"fewshot: note: {message}", file=sys.stderr))
    for p in predictions:
        if args.json:
            print(json.dumps({"query": p.query, "label": p.label, "probability": round(p.probability, 4),
                              "scores": {k: round(v, 4) for k, v in p.scores.items()}}))
        else:
            print(f"{p.label}\t{p.probability:.3f}\t{p.query}")
    return 0


def _note(message: str) -> None:
    print(f"fewshot: note: {message}", file=sys.stderr)


def cmd_fit(args: argparse.Namespace) -> int:
    from fewshot.classifier import check_writable, fit, is_classifier

    check_writable(args.out)
    if is_classifier(args.out) and not args.force:
        raise FewShotError(f"{args.out} already holds a classifier; pass --force to replace it")
    classifier = fit(args.support, args.model, args.method, args.text_column, args.label_column, args.invert,
                     image_column=args.image_column, overrides=args.settings,
                     notes=lambda m: print(m) if m.startswith(("default model:", "model:")) else _note(m))
    classifier.save_pretrained(args.out)
    shots = list(classifier.info["shots"].values())
    each = f"{min(shots)}" if min(shots) == max(shots) else f"{min(shots)} to {max(shots)}"
    print(f"saved a {len(classifier.classes)}-class {classifier.info['method']} classifier ({each} example"
          f"{'s' if max(shots) > 1 else ''} per class) to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import csv
    import io

    from fewshot.classifier import from_pretrained

    if args.out is not None:
        _refuse_to_replace(args.out, args.force)
    if args.out is not None and args.out.is_dir():
        raise FewShotError(f"{args.out} is a folder; --out names the CSV file to write")
    if args.top_k < 1:
        raise FewShotError(f"--top-k must be >= 1, got {args.top_k}")
    classifier = from_pretrained(args.model)
    k = min(args.top_k, len(classifier.classes))
    inputs: list[str] = []
    if classifier.modality == "text":
        from fewshot.classify import TEXT_SUFFIXES, read_queries

        for item in args.inputs:
            path = Path(item)
            is_file = path.suffix.lower() in TEXT_SUFFIXES and path.is_file()
            inputs += read_queries(path, args.text_column) if is_file else [item]
    else:
        inputs = list(args.inputs)
    items = classifier.expand(inputs, _note)
    header = ["input", "label", "probability"]
    for rank in range(2, k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    start = 0
    for logits in classifier.logits_batches(items, args.batch_size, progress=not args.no_progress):
        probs = torch_softmax(logits)
        top_p, top_i = probs.topk(k, dim=-1)
        for row, (ps, ids) in enumerate(zip(top_p.tolist(), top_i.tolist(), strict=True)):
            cells = [items[start + row]]
            for p, i in zip(ps, ids, strict=True):
                cells += [classifier.classes[i], f"{p:.6f}"]
            writer.writerow(cells)
        start += len(logits)
    if args.out is None:
        sys.stdout.write(text.getvalue())
    else:
        from fewshot.io import atomic_write

        atomic_write(args.out, text.getvalue())
        print(f"wrote {len(items)} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fewshot.classifier import ONNX, from_pretrained, is_classifier

    if (args.model / "checkpoints").is_dir() and not is_classifier(args.model):
        return _export_run(args)
    if not args.onnx:
        raise FewShotError(f"{args.model} is not a run folder (no checkpoints/); a classifier folder written by "
                           f"fewshot fit exports with --onnx")
    out = args.out or args.model / ONNX
    _refuse_to_replace(out, args.force)
    done = from_pretrained(args.model).export_onnx(out)
    batch = "dynamic batch" if done["dynamic_batch"] else "batch of 1 (this predictor loops over its queries)"
    print(f"wrote {out} ({batch}; onnxruntime matches PyTorch to {done['max_difference']:.1g} on "
          f"{done['checked_inputs']} inputs)")
    return 0


def _refuse_to_replace(out: Path, force: bool) -> None:
    """An existing ``--out`` file is replaced only with ``--force`` (``predict``, ``export``)."""
    if out.exists() and not force:
        raise FewShotError(f"{out} exists; pass --force to overwrite it")


def _export_run(args: argparse.Namespace) -> int:
    from fewshot.engine.checkpoint import load_checkpoint, model_only, save_checkpoint

    run, out = args.model, args.out
    if args.onnx:
        raise FewShotError(f"{run} is a training run; --onnx exports a classifier folder (fewshot fit --model "
                           f"RUN_MODEL.safetensors ... --out CLF, then fewshot export CLF --onnx). Export the run's "
                           f"model with --out FILE.safetensors")
    if out is None or out.suffix != ".safetensors":
        raise FewShotError(f"give --out FILE.safetensors, the model file to write (got {out or 'no --out'})")
    source = run / "checkpoints" / f"{args.checkpoint}.safetensors"
    if out.is_dir():
        raise FewShotError(f"{out} is a folder; give --out a file name")
    if out.resolve().parent == source.resolve().parent:
        raise FewShotError(f"{out} is in the run's checkpoints/ folder, where the run keeps what it resumes from; "
                           f"write the model file elsewhere")
    _refuse_to_replace(out, args.force)
    model = model_only(load_checkpoint(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model)
    best = model.extra.get("best_val_accuracy")
    print(f"wrote {out}: {model.config.get('name')} at iteration {model.iteration:,}"
          + (f" (best validation {100 * best:.2f}%)" if isinstance(best, float) and args.checkpoint == "best" else "")
          + "; no optimizer or random state")
    return 0


def torch_softmax(logits):  # noqa: ANN001, ANN201 - a torch tensor
    import torch

    return torch.softmax(logits, dim=-1)


if __name__ == "__main__":
    entry_point()
