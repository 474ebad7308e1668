"""Run the bad-input catalogue (``tests/bad_input/``) against a checkout and count what a user meets, by surface.

Each case runs ``fewshot`` in a real process, as the tests do; its outcome is one of ``clean error``, ``correct``,
``traceback``, ``silent wrong``, ``lost file``, ``hang`` (``tests/bad_input/bad_input_harness.py``). With ``--src``
the cases run against another checkout's ``src/`` (e.g. an older commit in a ``git worktree``), which is how the
"before" column of ``results/reliability.md`` is measured.

Usage: python bench/reliability.py [--src PATH/src] [--out bench/out/reliability.json] [-k SUBSTRING] [--files GLOB]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATALOGUE = REPO / "tests" / "bad_input"


def load_cases(files: str = "test_*.py") -> list:
    sys.path.insert(0, str(CATALOGUE))
    cases = []
    for path in sorted(CATALOGUE.glob(files)):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module  # dataclasses in the module look themselves up there
        spec.loader.exec_module(module)
        runner = getattr(module, "run_limited", None)  # cases run under a limit (read-only folders, file size)
        cases += [(case, runner) for case in getattr(module, "CASES", [])]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, help="the src/ folder of the checkout to test (default: this one)")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("FEWSHOT_DATA") or REPO.parent / "shared" / "data"))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "reliability.json")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    parser.add_argument("--files", default="test_*.py", help="which catalogue files (a glob in tests/bad_input/)")
    args = parser.parse_args()
    src = (args.src or REPO / "src").resolve()
    sys.path.insert(0, str(src))  # the tiny trained runs the cases copy are made by the checkout under test
    sys.path.insert(0, str(CATALOGUE))
    import pytest
    from bad_input_harness import outcome, run_case

    cases = [(c, runner) for c, runner in load_cases(args.files) if args.k in c.id]
    rows, totals = [], collections.defaultdict(collections.Counter)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (case, runner) in enumerate(cases):
            folder = Path(tmp) / f"case{i}"
            began = time.perf_counter()
            try:
                if runner is None:
                    result = run_case(case, folder, args.data_root, pythonpath=str(src))
                else:
                    with pytest.MonkeyPatch.context() as patch:
                        result = runner(case, folder, args.data_root, patch, pythonpath=str(src))
                got = outcome(case, result, folder)
                last = (result.stderr.strip().splitlines() or [""])[-1][:300]
            except Exception as exc:  # a case whose set-up needs what the checkout lacks
                got, last = "set-up failed", f"{type(exc).__name__}: {exc}"[:300]
            totals[case.surface][got] += 1
            rows.append({"id": case.id, "surface": case.surface, "expected": case.expect, "outcome": got,
                         "seconds": round(time.perf_counter() - began, 1), "last_stderr_line": last})
            print(f"{got:14} {case.surface:12} {case.id}", flush=True)
    report = {"src": str(src), "cases": len(rows), "by_surface": {s: dict(c) for s, c in sorted(totals.items())},
              "total": dict(sum(totals.values(), collections.Counter())), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["total"]))


if __name__ == "__main__":
    main()
