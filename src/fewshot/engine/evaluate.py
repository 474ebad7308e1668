"""The evaluation protocol: fixed seeded test episodes, mean accuracy with a 95% confidence interval.

The interval is Student's t: ``t(0.975, n - 1) * s / sqrt(n)`` over the ``n`` per-episode (or per-draw) scores, with
``s`` their sample standard deviation. For 600 episodes t is 1.9639 (the normal 1.96 within 0.2%); for the 5 draws of
the all-classes text kind it is 2.776, which the normal approximation would understate by about 30%.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from fewshot.data.base import ClassDataset
from fewshot.data.tasks import TaskSampler, episode_range
from fewshot.engine import distributed
from fewshot.engine.predictions import episode_predictions, read_predictions, write_predictions
from fewshot.engine.records import EvalRecord
from fewshot.errors import FewShotError
from fewshot.methods.base import Method
from fewshot.models.base import evaluating


@dataclass
class EvalResult:
    accuracy: float
    """Mean accuracy over episodes, in [0, 1]."""
    ci95: float
    """Half-width of the 95% confidence interval: t(0.975, episodes - 1) * std / sqrt(episodes) (Student's t; NaN
    for one episode)."""
    episodes: int
    way: int
    shot: int
    query: int
    per_episode: list[float] = field(default_factory=list, repr=False)

    def __str__(self) -> str:
        if not math.isfinite(self.ci95):
            return f"{100 * self.accuracy:.2f}% (no interval from {self.episodes} episode)"
        return f"{100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.episodes} episodes)"

    def to_dict(self, per_episode: bool = False) -> dict:
        """The fields as JSON takes them: ``ci95`` is ``None`` (null) where it is undefined (one episode)."""
        out = asdict(self)
        if not math.isfinite(self.ci95):
            out["ci95"] = None
        if not per_episode:
            out.pop("per_episode")
        return out


T975 = (12.706204736174694, 4.302652729749462, 3.1824463052837078, 2.7764451051977934, 2.5705818356363146,
        2.4469118511449786, 2.364624251592784, 2.306004135204166, 2.262157162798205, 2.228138851986274,
        2.200985160091639, 2.1788128296672284, 2.1603686564627913, 2.144786687917804, 2.131449545559776,
        2.1199052992212546, 2.1098155778333156, 2.1009220402410382, 2.0930240544083087, 2.085963447265864,
        2.0796138447276795, 2.0738730679040254, 2.0686576104190486, 2.0638985616280245, 2.0595385527532972,
        2.0555294386428735, 2.0518305164802846, 2.0484071417952454, 2.045229642132703, 2.0422724563012378)
"""Student's t 0.975 quantiles for 1 .. 30 degrees of freedom (``scipy.stats.t.ppf(0.975, df)``)."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom: the table up to 30, then the Cornish-Fisher
    expansion (Abramowitz & Stegun 26.7.5), within 3e-8 of the exact value there and 1e-14 at 599 — the same on
    every machine, with or without scipy."""
    if df < 1:
        raise FewShotError(f"Student's t needs >= 1 degree of freedom, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval, ``t(0.975, n - 1) * s / sqrt(n)`` (NaN for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return float(t.mean()), float("nan")
    return float(t.mean()), t975(len(values) - 1) * float(t.std(unbiased=True)) / math.sqrt(len(values))


def evaluate(
    method: Method, dataset: ClassDataset, way: int, shot: int, query: int = 15, episodes: int = 600, seed: int = 0,
    progress: bool = False, record: EvalRecord | None = None, chunk: int = 50, save_every: float = 30.0,
) -> EvalResult:
    """Score ``method`` on ``episodes`` fixed test tasks (the same tasks for every method with the same seed).

    Tasks go to ``method.predict`` in chunks of at most ``chunk``, sized from the measured time per task so that a
    chunk takes about ``save_every`` seconds: fast methods score 50 tasks per call, while a language model that
    needs seconds per task scores one or a few. With ``record`` (:mod:`fewshot.engine.records`), each finished
    chunk's per-episode scores are saved there, and a later call with the same record identity starts after the
    episodes already scored, so a killed evaluation loses at most one chunk (about ``save_every`` seconds of work).
    Chunking never changes the tasks or their scores: task ``i`` is the same for a given seed. Under ``torchrun``
    each chunk's tasks are split over the processes and their scores gathered in order
    (:class:`fewshot.engine.distributed.EpisodeShards`): the same per-episode scores as one process. Beside the
    record, each query's prediction is kept with the data set's classes (:mod:`fewshot.engine.predictions`).
    """
    if chunk < 1 or save_every <= 0:
        raise FewShotError(f"chunk must be >= 1 and save_every > 0, got {chunk}, {save_every}")
    if episodes < 1:
        raise FewShotError(f"the number of test episodes must be >= 1, got {episodes}")
    if record is not None:
        record = record.with_data(dataset)  # scores of other data (another --data-root) are not these
    # distributed (torchrun): rank 0 reads and writes the record; each chunk's episodes are split over the processes
    main = distributed.is_main()
    scores = distributed.from_main(lambda: (record.scores() if record is not None else [])[:episodes])
    done = len(scores)
    kept: list[dict] | None = None  # the per-query predictions of episodes 0 .. done - 1, while complete (rank 0)
    if record is not None and main:
        found = read_predictions(record.path, record.identity, scores) if done else ([], {})
        kept = found[0] if found is not None else None
    if done and main:
        print(f"continuing the evaluation after {done} recorded episodes ({record.path})", file=sys.stderr)
    sampler = TaskSampler(dataset, way, shot, query, seed=seed)
    bar = None
    if progress and episodes > done and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes - done, desc="eval", unit="task", leave=False)
    device = method.device
    shards = distributed.EpisodeShards()

    def score_range(first: int, size: int) -> tuple[list[float], float]:
        episode = episode_range(sampler, first, size)
        start = time.perf_counter()
        logits = method.predict(episode.to(device))
        predicted = logits.argmax(-1).cpu()
        correct = (predicted == episode.query_y).float().mean(-1).tolist()
        seconds = time.perf_counter() - start
        return list(zip(correct, episode_predictions(episode.classes, episode.query_y, predicted))), seconds

    try:
        with evaluating(method):
            size = 1  # the first chunk measures the cost of a task (per process)
            while len(scores) < episodes:
                count = min(size * shards.processes, episodes - len(scores))
                new, seconds = shards.score(score_range, len(scores), count)
                scores += [s for s, _ in new]
                per_task = seconds / math.ceil(count / shards.processes)
                if record is not None and main:
                    if kept is not None and not record.unwritable:  # first: a record never has more episodes
                        kept += [p for _, p in new]                   # than its predictions
                        try:
                            write_predictions(record.path, record.identity, kept, dataset.class_names)
                        except OSError as exc:  # read-only run folder, full disk: as the record itself, a warning
                            kept = None
                            print(f"fewshot: warning: cannot keep the predictions beside {record.path}: "
                                  f"{exc.strerror or exc}; scoring goes on without them", file=sys.stderr)
                    record.write(scores)
                if bar is not None:
                    bar.update(count)
                size = max(1, min(chunk, int(save_every / max(per_task, 1e-6))))
    finally:
        if bar is not None:
            bar.close()
        method.end_evaluation()  # also when stopped: a method drops (or persists) what it cached for it
    mean, ci = mean_ci95(scores)
    return EvalResult(mean, ci, len(scores), way, shot, query, scores)
