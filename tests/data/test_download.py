"""The download code, run on a local file:// copy of a real data file (no network here)."""

import pytest

from fewshot.data.download import download, file_digest
from fewshot.errors import FewShotError


def test_download_checks_md5_and_writes_only_a_whole_checked_file(tmp_path, data_root):
    source = data_root / "omniglot" / "images_evaluation.zip"
    md5 = file_digest(source)
    got = download(source.as_uri(), tmp_path / "a" / "copy.zip", md5=md5)
    assert got.read_bytes() == source.read_bytes()

    bad = tmp_path / "bad.zip"
    with pytest.raises(FewShotError, match="expected 0000"):
        download(source.as_uri(), bad, md5="0000")
    assert not bad.exists() and list(tmp_path.iterdir()) == [tmp_path / "a"]  # no partial file left behind

    with pytest.raises(FewShotError, match="could not download"):
        download((tmp_path / "missing.zip").as_uri(), tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()
