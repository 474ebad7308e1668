"""A user's own folder of images: loading, episodes, and clear errors for the usual mistakes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from fewshot.data.image_folder import ImageFolderConfig, build, image_folder
from fewshot.data.tasks import TaskSampler
from fewshot.errors import FewShotError


@pytest.fixture(scope="module")
def real_pngs(data_root, tmp_path_factory) -> dict[str, list[bytes]]:
    """The PNG bytes of 3 real Omniglot characters (20 drawings each), straight from the official zip."""
    out: dict[str, list[bytes]] = {}
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        for name in names:
            character = "_".join(name.split("/")[1:3])
            if character not in out and len(out) == 3:
                break
            out.setdefault(character, []).append(zf.read(name))
    return out


def _write(root: Path, classes: dict[str, list[bytes]], per_class: int | None = None) -> Path:
    for name, images in classes.items():
        (root / name).mkdir(parents=True)
        for i, data in enumerate(images[:per_class]):
            (root / name / f"{i:02d}.png").write_bytes(data)
    return root


def test_loads_classes_and_samples_episodes(real_pngs, tmp_path):
    root = _write(tmp_path / "chars", real_pngs)
    (tmp_path / "chars" / list(real_pngs)[0] / "notes.txt").write_text("not an image, ignored")
    data = image_folder(root, size=28, channels=1)
    assert data.class_names == sorted(real_pngs)
    assert data.class_sizes.tolist() == [20, 20, 20]
    assert data.images.shape == (60, 1, 28, 28) and data.images.dtype == torch.uint8
    episode = TaskSampler(data, way=3, shot=1, query=2, seed=0).sample(2)
    assert episode.support_x.shape == (2, 3, 1, 28, 28)
    assert 0.0 <= float(episode.support_x.min()) and float(episode.support_x.max()) <= 1.0
    # the strokes are dark on white in the PNGs: most pixels are bright, unless inverted
    assert float(data.images.float().mean()) > 128
    assert float(image_folder(root, size=28, channels=1, invert=True).images.float().mean()) < 128
    rgb = build("test", None, ImageFolderConfig(path=str(root), size=32, channels=3))
    assert rgb.images.shape == (60, 3, 32, 32)


def test_images_directly_in_root_is_a_layout_error(real_pngs, tmp_path):
    (tmp_path / "a.png").write_bytes(next(iter(real_pngs.values()))[0])
    with pytest.raises(FewShotError, match="directly inside it.*own sub-folder"):
        image_folder(tmp_path)


def test_corrupt_image_is_named(real_pngs, tmp_path):
    root = _write(tmp_path / "chars", real_pngs, per_class=3)
    bad = root / list(real_pngs)[1] / "01.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(FewShotError, match=r"01\.png is not a readable image"):
        image_folder(root)


def test_too_few_images_per_class(real_pngs, tmp_path):
    root = _write(tmp_path / "chars", real_pngs, per_class=2)
    with pytest.raises(FewShotError, match="has 2 image\\(s\\) but at least 5"):
        image_folder(root, min_per_class=5)
    # the episode sampler names the numbers too, when K + Q exceed a class
    data = image_folder(root, size=28, channels=1)
    with pytest.raises(FewShotError, match="need 3 examples per class"):
        TaskSampler(data, way=2, shot=1, query=2)


def test_missing_root_empty_class_and_single_class(real_pngs, tmp_path):
    with pytest.raises(FewShotError, match="does not exist"):
        image_folder(tmp_path / "nowhere")
    root = _write(tmp_path / "one", dict(list(real_pngs.items())[:1]))
    with pytest.raises(FewShotError, match="1 class folder"):
        image_folder(root)
    root = _write(tmp_path / "two", real_pngs, per_class=2)
    (root / "empty").mkdir()
    with pytest.raises(FewShotError, match="empty has no images"):
        image_folder(root)


def test_split_subfolders(real_pngs, tmp_path):
    for split in ("train", "val", "test"):
        _write(tmp_path / "data" / split, real_pngs, per_class=2)
    options = ImageFolderConfig(path="data", size=28, channels=1)
    assert len(build("val", str(tmp_path), options)) == 6
    flat = _write(tmp_path / "flat", real_pngs, per_class=2)
    with pytest.raises(FewShotError, match="only the 'test' split"):
        build("train", None, ImageFolderConfig(path=str(flat)))
