"""bench/time_to_accuracy.py --peer: settings the peer's step cannot follow are refused in one line, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, says", [
    (["omniglot_5w1s_mamlpp"], "no learned rates or MAML++ options"),
    (["omniglot_5w1s_maml", "method.head_init=prototypes"], "with its trained head"),
    (["omniglot_5w1s_maml", "train.precision=bf16"], "in fp32"),
    (["omniglot_5w1s_maml", "train.schedule=cosine"], "at a constant rate"),
])
def test_peer_refuses_what_its_step_cannot_follow(args, says, data_root, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "time_to_accuracy.py"), *args, "--peer", "learn2learn",
                          "--minutes", "0.1", "--out", str(tmp_path), "--data-root", str(data_root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and says in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written
