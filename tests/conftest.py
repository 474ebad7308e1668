"""Shared fixtures: the real data in $FEWSHOT_TEST_DATA, else $FEWSHOT_DATA, else ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FEWSHOT_TEST_DATA") or os.environ.get("FEWSHOT_DATA")
                 or REPO.parent / "shared" / "data")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core: one thread each, here and in the CLI subprocesses a test starts
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "omniglot" / "images_background.zip").exists():
        pytest.fail(f"real test data not found under {DATA_ROOT}; set FEWSHOT_DATA to the shared data folder")
    return DATA_ROOT


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine, two threads per process ran several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def omniglot_train(data_root):
    from fewshot.data.omniglot import omniglot

    return omniglot("train", data_root)


@pytest.fixture(scope="session")
def omniglot_test(data_root):
    from fewshot.data.omniglot import omniglot

    return omniglot("test", data_root)
