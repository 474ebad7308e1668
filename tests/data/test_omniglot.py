import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.omniglot import _resize, load_characters, omniglot, split_characters
from fewshot.errors import FewShotError


def test_all_characters_decoded(data_root):
    images, names = load_characters(data_root)
    assert images.shape == (1623, 20, 28, 28) and images.dtype == torch.uint8
    assert len(set(names)) == 1623
    assert sum(n.startswith("images_background/") for n in names) == 964
    assert (images.flatten(1).amax(1) == 255).all(), "every image has strokes (inverted: strokes = 255)"


def test_resize_modes_differ_as_documented(data_root):
    nearest, _ = load_characters(data_root, resize="nearest")
    lanczos, _ = load_characters(data_root, resize="lanczos")
    assert set(nearest[:50].unique().tolist()) == {0, 255}, "Pillow resizes 1-bit images with nearest neighbour"
    assert len(lanczos[:50].unique()) > 50, "true Lanczos on greyscale gives grey levels"


@pytest.mark.parametrize("scheme,sizes", [("vinyals", (1028, 172, 423)), ("maml", (1100, 100, 423))])
def test_splits_are_disjoint_and_complete(scheme, sizes):
    parts = [set(split_characters(scheme, s)) for s in ("train", "val", "test")]
    assert tuple(map(len, parts)) == sizes
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 1623


def test_rotations_are_classes(data_root):
    test = omniglot("test", data_root, scheme="vinyals")
    assert len(test) == 423 * 4
    base = test.data[0, 3]
    assert torch.equal(test.data[1, 3], torch.rot90(base, 1, dims=(-2, -1)))
    plain = omniglot("test", data_root, scheme="vinyals", rotations=False)
    assert len(plain) == 423 and torch.equal(plain.data[0], test.data[0])


def test_trainval_meta_trains_on_train_and_validation_characters(data_root):
    train = omniglot("train", data_root, scheme="vinyals")
    both = omniglot("train", data_root, scheme="vinyals", trainval=True)
    val = omniglot("val", data_root, scheme="vinyals")
    assert len(both) == (1028 + 172) * 4 == len(train) + len(val)
    assert both.class_names == train.class_names + val.class_names
    assert torch.equal(both.data, torch.cat([train.data, val.data]))
    assert torch.equal(omniglot("test", data_root, scheme="vinyals", trainval=True).data,
                       omniglot("test", data_root, scheme="vinyals").data)
    with pytest.raises(FewShotError, match="cannot validate"):
        omniglot("val", data_root, scheme="vinyals", trainval=True)


def test_rotating_before_the_resize_gives_the_same_images(data_root):
    """Snell et al.'s code rotates the 105x105 drawing, then resizes it (Pillow's default filter, nearest for these
    1-bit PNGs); we resize, then rotate the 28x28 image (``torch.rot90``). The images are the same: every 10th
    drawing of the evaluation alphabets, each rotation, pixel for pixel."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))[::10]
        assert len(names) == 1318
        for name in names:
            image = Image.open(io.BytesIO(zf.read(name)))
            ours = torch.from_numpy(_resize(image, "nearest", 28))
            for degrees in (90, 180, 270):
                theirs = 255 - np.asarray(image.rotate(degrees).resize((28, 28)).convert("L"), dtype=np.uint8)
                assert torch.equal(torch.rot90(ours, k=degrees // 90, dims=(-2, -1)), torch.from_numpy(theirs)), name


def _write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_wrong_layout_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "omniglot"
    root.mkdir()
    _write_zip(root / "images_background.zip", {"Alphabet/character01/0001_01.png": b"x"})
    _write_zip(root / "images_evaluation.zip", {"images_evaluation/A/character01/0001_01.png": b"x"})
    with pytest.raises(FewShotError, match="unexpected entry"):
        load_characters(tmp_path, allow_download=False)


def test_corrupt_image_is_named(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "omniglot"
    root.mkdir()
    src = zipfile.ZipFile(data_root / "omniglot" / "images_background.zip")
    with zipfile.ZipFile(root / "images_background.zip", "w") as out:
        for i, name in enumerate(n for n in src.namelist() if n.endswith(".png")):
            out.writestr(name, b"not a png" if i == 7 else src.read(name))
    (root / "images_evaluation.zip").write_bytes((data_root / "omniglot" / "images_evaluation.zip").read_bytes())
    with pytest.raises(FewShotError, match="not a readable image"):
        load_characters(tmp_path, allow_download=False)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(FewShotError, match="missing"):
        load_characters(tmp_path, allow_download=False)


def test_cached_load_is_fast(data_root):
    import time

    load_characters(data_root)
    start = time.perf_counter()
    load_characters(data_root)
    assert time.perf_counter() - start < 2.0



@pytest.fixture(scope="module")
def decoded_cache(tmp_path_factory, data_root):
    """A cache folder holding the decoded characters, built once for the cases that damage a copy of it."""
    folder = tmp_path_factory.mktemp("omniglot_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEWSHOT_CACHE", str(folder))
        images, names = load_characters(data_root)
    return folder, images, names


@pytest.mark.parametrize("damage", ["index_not_json", "index_cut", "array_cut", "array_other_shape"])
def test_a_damaged_cache_is_rebuilt_not_read(tmp_path, monkeypatch, data_root, decoded_cache, damage):
    folder, images, names = decoded_cache
    for file in folder.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path))
    (array,) = tmp_path.glob("omniglot_*.npy")
    index = array.with_suffix(".json")
    if damage == "index_not_json":
        index.write_text('["images_background/')
    elif damage == "index_cut":
        index.write_text(json.dumps(names[:-1]))
    elif damage == "array_cut":
        array.write_bytes(array.read_bytes()[:1000])
    else:
        np.save(array, np.zeros((3, 20, 28, 28), np.uint8), allow_pickle=False)
    again, again_names = load_characters(data_root)
    assert again_names == names and torch.equal(again, images)
    assert json.loads(index.read_text()) == names and np.load(array).shape == tuple(images.shape)  # rebuilt on disk
