"""bf16 on a CPU without bfloat16 instructions is emulated and slow: the flags are read and the user is warned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fewshot import hardware

CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx avx2 fma{extra}\nbogomips\t: 4890\n"


@pytest.mark.parametrize(("extra", "expected"), [("", False), (" avx512f avx512_bf16", True), (" amx_bf16", True)])
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, extra, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(extra=extra))
    assert hardware.cpu_has_bf16(info) is expected
    assert "avx2" in hardware.cpu_flags(info)


def test_the_cpu_generation_tells_apart_cpus_of_one_name(tmp_path):
    zen5 = tmp_path / "zen5"
    zen5.write_text("processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nflags\t\t: avx2\n")
    assert hardware.cpu_generation(zen5) == "family 26, model 2"  # not "model name"'s value
    assert hardware.cpuinfo_value(("model name",), zen5) == "AMD EPYC"


def test_unknown_cpus_are_not_guessed(tmp_path):
    (tmp_path / "no_flags").write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # e.g. aarch64 lists Features
    assert hardware.cpu_has_bf16(tmp_path / "no_flags") is None
    assert hardware.cpu_has_bf16(tmp_path / "missing") is None
    assert hardware.cpu_generation(tmp_path / "no_flags") is None
    assert hardware.cpu_generation(tmp_path / "missing") is None


def test_bf16_without_instructions_warns_once(monkeypatch, capsys):
    hardware.warn_slow_bf16.cache_clear()
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert hardware.warn_slow_bf16("cpu", "train.precision")
    assert "train.precision=bf16 on a CPU without bfloat16 instructions" in capsys.readouterr().err
    assert hardware.warn_slow_bf16("cpu", "train.precision")  # cached: said once per process
    assert capsys.readouterr().err == ""
    assert not hardware.warn_slow_bf16("cuda", "train.precision")  # GPUs have their own bf16 units
    hardware.warn_slow_bf16.cache_clear()
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert not hardware.warn_slow_bf16("cpu", "model.options.precision")
    assert capsys.readouterr().err == ""
    hardware.warn_slow_bf16.cache_clear()


def test_machine_describes_this_machine():
    here = hardware.machine()
    assert here["torch"] == torch.__version__ and here["torch_threads"] == torch.get_num_threads()
    assert here["cpu_cores"] == os.cpu_count()
    assert len(here["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    if names:
        assert here["cpu"] == names[0]
