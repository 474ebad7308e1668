"""The run report as one self-contained HTML page: plots are PNGs embedded as base64 (matplotlib), the style is
inline, nothing is loaded from elsewhere, every piece of text from the run folder is escaped (class names come from
users' folders). The report's data (:func:`fewshot.engine.report.collect`) are embedded too, as a JSON block
(``<script type="application/json" id="report-data">``, not executed), for tools and tests.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

from fewshot.engine.logs import describe_machine
from fewshot.engine.report import FORMAT, MARKER

TOP_PAIRS = 15
"""Confused pairs listed."""
WORST_CLASSES = 10
"""Classes with the lowest accuracy listed."""
MATRIX_CLASSES = 12
"""The most confused classes drawn in the confusion matrix (all of them when there are no more)."""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #1d232a; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0 0 4px; } h2 { border-bottom: 2px solid #d9dee4; padding-bottom: 4px;
margin-top: 36px; } h3 { margin-bottom: 6px; }
.sub { color: #5b6773; margin: 0 0 16px; }
nav a { margin-right: 14px; color: #1f5fa8; text-decoration: none; } nav { margin: 8px 0 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.93em; }
th, td { border: 1px solid #d9dee4; padding: 4px 10px; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
th { background: #eef1f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
pre { background: #f3f5f7; border: 1px solid #d9dee4; padding: 10px 12px; overflow-x: auto; font-size: 0.85em; }
.note { color: #7a5a00; background: #fff8e1; border-left: 4px solid #e0b000; padding: 6px 10px; }
.empty { color: #5b6773; font-style: italic; }
.big { font-size: 1.25em; font-weight: 600; }
footer { margin-top: 40px; color: #5b6773; font-size: 0.85em; }
"""


def e(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def pct(value: Any, ci: Any = None) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    text = f"{100 * value:.2f}%"
    if isinstance(ci, (int, float)) and math.isfinite(ci):
        text += f" ± {100 * ci:.2f}%"
    return text


def render(data: dict[str, Any]) -> str:
    """The page of :func:`fewshot.engine.report.collect`'s ``data``."""
    sections = [
        ("curves", "Learning curves", _curves(data["metrics"])),
        ("shots", "Accuracy vs shots", _shots(data)),
        ("episodes", "Per-episode accuracy", _histogram(data.get("evaluation"))),
        ("confusion", "Confusion between classes", _confusion(data.get("confusion"), data.get("evaluation"))),
        ("config", "Config", f"<pre>{e(data['config_yaml'].rstrip())}</pre>"),
        ("environment", "Environment", _environment(data["environment"], data.get("segments") or [])),
    ]
    nav = " ".join(f'<a href="#{key}">{e(title)}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}">\n<h2>{e(title)}</h2>\n{content}\n</section>'
                     for key, title, content in sections)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in data.get("notes") or [])
    embedded = _finite({k: v for k, v in data.items() if k != "metrics"})  # metrics.jsonl holds the curves' rows
    payload = json.dumps(embedded, allow_nan=False, default=str, separators=(",", ":"))
    payload = payload.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return f"""{MARKER}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{e(FORMAT)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(data['run'])} — fewshot run report</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<header id="summary">
<h1>Run report: {e(data['run'])}</h1>
<p class="sub">{e(data['folder'])} · written {e(data['generated'])} by fewshot {e(data['fewshot'])}</p>
<nav>{nav}</nav>
{notes}
{_summary(data)}
</header>
{body}
<footer>Self-contained page written by <code>fewshot report</code> (format {e(FORMAT)}); its data are embedded in the
<code>report-data</code> JSON block. Regenerate with <code>fewshot report {e(data['folder'])}</code>.</footer>
</main>
<script type="application/json" id="report-data">{payload}</script>
</body>
</html>
"""


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i in numeric else f"<td>{e(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(data: dict[str, Any]) -> str:
    s, ev = data["summary"], data.get("evaluation")
    wall = s.get("wall_seconds")
    rows = [["method", s.get("method")], ["kind of run", s.get("experiment")], ["data", s.get("data")],
            ["model", s.get("model")],
            ["iterations", f"{s.get('iterations_done')} of {s.get('iterations')} ({s.get('status')})"],
            ["training time", f"{wall:.1f} s" if isinstance(wall, (int, float)) else "–"]]
    if s.get("best_val_iteration") is not None:
        rows.append(["best validation accuracy",
                     f"{pct(s['best_val_accuracy'], s.get('best_val_ci95'))} at iteration {s['best_val_iteration']}"])
    if ev is not None:
        rows.append(["test accuracy (best checkpoint)",
                     f"{pct(ev['accuracy'], ev.get('ci95'))} ({ev['episodes']} episodes, {ev['way']}-way "
                     f"{ev['shot']}-shot, {ev['query']} queries per class, {ev['split']} split, seed {ev['seed']})"])
    test = s.get("test")
    if test is not None:
        rows.append(["test.json", f"{pct(test.get('accuracy'), test.get('ci95'))} ({test.get('episodes')} episodes, "
                                  f"{test.get('way')}-way {test.get('shot')}-shot)"])
    if ev is None and test is None:
        rows.append(["test accuracy", "not measured (run `fewshot eval RUN`)"])
    return _table(["", ""], rows).replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return ('<img alt="plot" src="data:image/png;base64,'
            + base64.b64encode(buffer.getvalue()).decode("ascii") + '">')


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _common_prefix(names: list[str]) -> str:
    """The folders all ``names`` start with (``images_evaluation/``), to leave out when showing them."""
    if len(names) < 2:
        return ""
    first, last = min(names), max(names)
    common = first[: next((i for i, (a, b) in enumerate(zip(first, last)) if a != b), min(len(first), len(last)))]
    return common[: common.rfind("/") + 1]


def _label(text: Any, width: int = 30) -> str:
    """Text for a matplotlib label: shortened (the end kept), and ``$`` escaped (not mathtext)."""
    text = str(text)
    if len(text) > width:
        text = "…" + text[-(width - 1):]
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _curves(rows: list[dict[str, Any]]) -> str:
    train = [r for r in rows if r.get("phase") == "train"]
    val = [r for r in rows if r.get("phase") == "val"]
    if not train and not val:
        return '<p class="empty">No metrics were logged (metrics.jsonl is empty or missing).</p>'
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for row_axes, x, xlabel in ((axes[0], "iteration", "iteration"), (axes[1], "seconds", "wall time (s)")):
        ax_loss, ax_acc = row_axes
        if train:
            ax_loss.plot([r[x] for r in train], [r.get("loss") for r in train], lw=1, color="#1f77b4")
            ax_acc.plot([r[x] for r in train], [r.get("accuracy") for r in train], lw=1, color="#1f77b4",
                        label="train (query)")
        if val:
            ax_acc.errorbar([r[x] for r in val], [r["accuracy"] for r in val],
                            yerr=[r.get("ci95") or 0.0 for r in val], marker="o", ms=3, capsize=2, color="#d62728",
                            label="validation ± 95% CI")
        ax_loss.set(xlabel=xlabel, ylabel="loss", title=f"training loss vs {xlabel}")
        ax_acc.set(xlabel=xlabel, ylabel="accuracy", title=f"accuracy vs {xlabel}")
        ax_acc.legend(loc="best")
        for ax in row_axes:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    last = (train or val)[-1]
    return (_png(fig) + f"<p>{len(train)} training rows and {len(val)} validation rows from metrics.jsonl; last "
            f"row: iteration {e(last['iteration'])} at {e(round(last.get('seconds') or 0.0, 1))} s.</p>")


def _shots(data: dict[str, Any]) -> str:
    shots = [r for r in data.get("shots") or [] if r]
    if not shots:
        return ('<p class="empty">No test evaluation of the best checkpoint is recorded yet. '
                '<code>fewshot report RUN --shots 1,5,10</code> scores it at those shot counts.</p>')
    table = _table(["shot", "accuracy ± 95% CI", "episodes", "record"],
                   [[r["shot"], pct(r["accuracy"], r.get("ci95")), r["episodes"], r["record"]] for r in shots],
                   {0, 2})
    first = shots[0]
    text = (f"<p>{e(first['way'])}-way tasks, {e(first['query'])} queries per class, {e(first['split'])} split, seed "
            f"{e(first['seed'])}, best checkpoint. More shot counts: <code>fewshot report RUN --shots 1,5,10</code> "
            f"(scored once, then read from the records).</p>")
    if len(shots) < 2:
        return text + table
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.errorbar([r["shot"] for r in shots], [r["accuracy"] for r in shots],
                yerr=[r.get("ci95") or 0.0 for r in shots], marker="o", capsize=3)
    ax.set(xlabel="shots (support examples per class)", ylabel="test accuracy",
           title=f"{first['way']}-way accuracy vs shots")
    ax.set_xticks([r["shot"] for r in shots])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return text + _png(fig) + table


def _histogram(ev: dict[str, Any] | None) -> str:
    if ev is None or not ev.get("scores"):
        return '<p class="empty">No per-episode test record of the best checkpoint (run <code>fewshot eval RUN' \
               '</code>).</p>'
    scores, mean, ci = ev["scores"], ev["accuracy"], ev.get("ci95")
    queries = ev["way"] * ev["query"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if isinstance(queries, int) and 0 < queries <= 200:  # one bin per possible score k / queries
        edges = [(k - 0.5) / queries for k in range(queries + 2)]
    else:
        edges = [i / 40 for i in range(41)]
    ax.hist(scores, bins=edges, color="#8fb3d9", edgecolor="#4a6f96")
    if ci is not None:
        ax.axvspan(mean - ci, mean + ci, color="#d62728", alpha=0.18, label=f"95% CI ± {100 * ci:.2f}%")
    ax.axvline(mean, color="#d62728", lw=2, label=f"mean {100 * mean:.2f}%")
    ax.set(xlabel="episode accuracy", ylabel="episodes", title=f"{len(scores)} test episodes", xlim=(-0.02, 1.02))
    ax.legend(loc="upper left")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    low, high = min(scores), max(scores)
    return (_png(fig) + f'<p>Mean <span class="big">{e(pct(mean, ci))}</span> over {len(scores)} episodes '
            f"(Student's t interval); lowest episode {e(pct(low))}, highest {e(pct(high))}. Record: "
            f"<code>{e(ev['record'])}</code>.</p>")


def _confusion(conf: dict[str, Any] | None, ev: dict[str, Any] | None) -> str:
    if conf is None:
        why = ("no test evaluation is recorded" if ev is None else
               "the evaluation kept no per-query predictions (it was scored by an earlier fewshot; "
               "<code>fewshot eval RUN --fresh</code> scores it again and keeps them)")
        return f'<p class="empty">No confusion data: {why}.</p>'
    names = conf["names"]
    prefix = _common_prefix(list(names.values()))

    def name(c: int) -> str:
        return names.get(str(c), f"class {c}")[len(prefix):] or names.get(str(c), "")

    counts = {(t, p): n for t, p, n in conf["counts"]}
    totals = {c: n for c, n, _ in conf["per_class"]}
    off = sorted(((n, t, p) for (t, p), n in counts.items() if t != p), key=lambda x: (-x[0], x[1], x[2]))
    intro = (f"<p>Over the data set's own classes (episode labels are drawn afresh per task): {conf['queries']} "
             f"queries of {conf['episodes']} episodes, {conf['correct']} right "
             f"({e(pct(conf['correct'] / conf['queries']))}), over {conf['classes']} classes"
             + (f" (names shown without their common prefix <code>{e(prefix)}</code>)" if prefix else "") + ".</p>")
    if not off:
        return intro + '<p class="empty">No query was confused.</p>'
    # the classes of the most confused pairs, all classes when few
    every = sorted(totals)
    if len(every) <= MATRIX_CLASSES:
        shown = every
    else:
        picked: dict[int, None] = {}
        for _, t, p in off:
            if len(picked) + (t not in picked) + (p not in picked) > MATRIX_CLASSES:
                break
            picked.update({t: None, p: None})
        shown = sorted(picked)
    plt = _plt()
    size = len(shown)
    fig, ax = plt.subplots(figsize=(3 + 0.55 * size, 2.2 + 0.5 * size))
    matrix = [[counts.get((t, p), 0) for p in shown] for t in shown]
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(size), [_label(name(c)) for c in shown], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(size), [_label(name(c)) for c in shown], fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    top = max(max(r) for r in matrix) or 1
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if n > 0.6 * top else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, label="queries")
    title = "all classes" if shown is every else f"the {size} classes of the most confused pairs"
    ax.set_title(f"confusion counts, {title}", fontsize=10)
    fig.tight_layout()
    pairs = _table(["true class", "predicted as", "queries", "of the true class's"],
                   [[name(t), name(p), n, pct(n / totals[t])] for n, t, p in off[:TOP_PAIRS]], {2, 3})
    worst = sorted(conf["per_class"], key=lambda r: (r[2] / r[1], -r[1], r[0]))[:WORST_CLASSES]
    worst_table = _table(["class", "queries", "right", "accuracy"],
                         [[name(c), n, ok, pct(ok / n)] for c, n, ok in worst], {1, 2, 3})
    return (intro + _png(fig) + f"<h3>Most confused pairs (top {min(TOP_PAIRS, len(off))} of {len(off)})</h3>"
            + pairs + f"<h3>Classes with the lowest accuracy (of {conf['classes']})</h3>" + worst_table)


def _environment(env: dict[str, Any], stretches: list[dict[str, Any]]) -> str:
    def yes_no(x: Any) -> str:
        return "unknown" if x is None else ("yes" if x else "no")

    cores = env.get("cpu_cores")
    if env.get("cpu_cores_usable") not in (None, cores):
        cores = f"{cores} ({env['cpu_cores_usable']} usable by this process)"
    rows = [["fewshot", env.get("fewshot")], ["torch", env.get("torch")], ["python", env.get("python")],
            ["platform", env.get("platform")], ["CPU", env.get("cpu") or "unknown"],
            ["CPU generation", env.get("cpu_generation") or "unknown"], ["CPU cores", cores],
            ["torch threads", env.get("torch_threads")],
            ["CPU bfloat16 instructions", yes_no(env.get("cpu_bf16"))],
            ["GPU", ", ".join(env.get("gpus") or []) or "none"]]
    if env.get("gpus"):
        rows.append(["GPU bfloat16", yes_no(env.get("cuda_bf16"))])
    rows += [["world size (processes the run trained with)", env.get("world_size")],
             ["train.device / train.precision", f"{env.get('train_device')} / {env.get('train_precision')}"]]
    where = ""
    if stretches:
        where = ("<h3>Where it trained</h3><p>One row per <code>fewshot train</code> that started or resumed the "
                 "run.</p>" + _table(["iterations", "machine"], [[f"{s['from']:,}-{s['to']:,}",
                                                                  describe_machine(s["machine"])]
                                                                 for s in stretches]))
    return ("<p>The machine that wrote this report (the training machine when <code>fewshot train</code> wrote "
            "it).</p>" + _table(["", ""], rows).replace("<thead><tr><th></th><th></th></tr></thead>", "") + where)
