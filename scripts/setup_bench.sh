#!/usr/bin/env bash
# Installs the benchmark peers (learn2learn 0.2.0, higher 0.2.1, TorchOpt 0.7.3) into the project's venv from PyPI.
#
# Nothing is vendored: every package comes from PyPI at a pinned version, with --no-deps so that torch stays at
# the version already installed (never pulls a CUDA build or torchvision).
#   * learn2learn 0.2.0 ships only as an sdist whose pre-generated C files don't compile on Python 3.11: we
#     regenerate them with `cython -3` from its three .pyx files and install with --no-deps. Its package __init__
#     imports torchvision, so the bench imports learn2learn.algorithms.maml directly (see bench/peers.py).
#   * TorchOpt's compiled extension doesn't load against torch 2.13.0; its pure-Python path is used.
#
# Usage: scripts/setup_bench.sh [VENV]   (default: .venv at the repository root)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "no venv at $VENV: create it first (python -m venv $VENV; pip install torch==2.13.0 -e .)" >&2
    exit 1
fi
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

pip_install "psutil>=5.9" "cython==3.1.4" "optree>=0.9" "graphviz>=0.20" "typing-extensions>=4"
pip_install --no-deps "higher==0.2.1" "torchopt==0.7.3"

if ! "$PY" -c 'import importlib.metadata as m; assert m.version("learn2learn") == "0.2.0"' 2>/dev/null; then
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "learn2learn==0.2.0" -d "$WORK"
    tar -xzf "$WORK/learn2learn-0.2.0.tar.gz" -C "$WORK"
    SRC="$WORK/learn2learn-0.2.0"
    for pyx in "$SRC"/learn2learn/data/{meta_dataset,task_dataset,transforms}.pyx; do
        "$VENV/bin/cython" -3 "$pyx"
    done
    pip_install --no-deps --no-build-isolation "$SRC"
fi

TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$TORCH_BEFORE" != "$TORCH_AFTER" ]]; then
    echo "torch changed from $TORCH_BEFORE to $TORCH_AFTER: reinstall torch==$TORCH_BEFORE" >&2
    exit 1
fi

cd "$ROOT" && "$PY" -c 'from bench.peers import check; check()'
