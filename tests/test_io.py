"""The library's file helpers: atomic writes, and JSON read back with one short reason for every failure."""

from __future__ import annotations

import pytest

from fewshot.io import JSONReadError, atomic_write, parse_json, read_json


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, '{"a": 1}')
    atomic_write(path, b'{"a": 2}')
    assert read_json(path) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "a.json", '{"a": 1}')

    def broken(f):
        f.write(b"{")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.parametrize(("content", "reason"), [
    (b"{oops", r"^not JSON: Expecting property name enclosed in double quotes at line 1, column 2$"),
    (b"[" * 100_000 + b"]" * 100_000, r"^JSON nested too deeply to read$"),
    (b'{"a": "\xff"}', r"^not UTF-8 \(byte 7\)$"),
    (b"[" + b"1" * 5000 + b"]", r"^JSON Python cannot read: Exceeds the limit \(4300 digits\)"),
])
def test_every_way_a_file_is_not_json_is_one_reason(tmp_path, content, reason):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(JSONReadError, match=reason):
        read_json(path)


def test_a_missing_or_unreadable_file_is_a_json_read_error(tmp_path):
    with pytest.raises(JSONReadError, match=r"^cannot read it \(No such file or directory\)$"):
        read_json(tmp_path / "missing.json")
    with pytest.raises(JSONReadError, match=r"^cannot read it \(Is a directory\)$"):
        read_json(tmp_path)


def test_parse_json_gives_the_value_or_the_reason():
    assert parse_json('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    with pytest.raises(JSONReadError, match=r"^not JSON: Extra data at line 1, column 4$"):
        parse_json("{} {}")
    assert issubclass(JSONReadError, ValueError)
