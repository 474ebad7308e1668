"""The feature-vector data set on real Office-Caltech10 SURF vectors: every format reads the same examples, splits come
from {split} or a files mapping, a target domain is cut into fixed halves, and bad files fail in one line."""

import numpy as np
import pytest
import torch

from fewshot.data.tasks import TaskSampler
from fewshot.data.vectors import VectorsConfig, build, load_vectors
from fewshot.errors import FewShotError

SURF = "domain_adaptation/office_caltech10_surf"
DSLR_SIZES = [12, 21, 12, 13, 10, 24, 22, 12, 8, 23]  # README: per-class counts of dslr_SURF_L10.mat


@pytest.fixture(scope="module")
def dslr(data_root):
    return load_vectors(data_root / SURF / "dslr_SURF_L10.mat", features_key="fts", labels_key="labels")


@pytest.fixture(scope="module")
def arrays(dslr):
    """The dslr vectors as they would be saved by a user: float features, labels 1..10."""
    x = dslr.images.numpy().astype(np.float64)
    y = np.array([int(dslr.class_names[c]) for c in dslr.labels.tolist()])
    return x, y


def test_mat_file_reads_the_readme_counts(dslr):
    assert dslr.images.shape == (157, 800) and dslr.images.dtype == torch.float32
    assert dslr.class_names == [str(c) for c in range(1, 11)]  # numeric order, not "1", "10", "2"
    assert dslr.class_sizes.tolist() == DSLR_SIZES and dslr.feature_dim == 800


def test_npz_npy_folder_and_csv_read_the_same_examples(tmp_path, arrays, dslr):
    x, y = arrays
    np.savez(tmp_path / "d.npz", X=x, y=y)
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "X.npy", x)
    np.save(tmp_path / "folder" / "y.npy", y)
    rows = ["label," + ",".join(f"f{j}" for j in range(x.shape[1]))]
    rows += [f"{label}," + ",".join(f"{v:g}" for v in row) for row, label in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    for path in ("d.npz", "folder", "d.csv"):
        data = load_vectors(tmp_path / path)
        assert data.class_names == dslr.class_names, path
        assert torch.equal(data.labels, dslr.labels) and torch.equal(data.images, dslr.images), path


def test_word_labels_and_normalisation(tmp_path, arrays):
    x, y = arrays
    names = np.array(["class_" + chr(ord("a") + v - 1) for v in y])
    np.savez(tmp_path / "w.npz", feats=x, classes=names)
    data = load_vectors(tmp_path / "w.npz", features_key="feats", labels_key="classes", normalize="l2")
    assert data.class_names[:2] == ["class_a", "class_b"]
    assert torch.allclose(data.images.norm(dim=1), torch.ones(len(y)), atol=1e-5)
    l1 = load_vectors(tmp_path / "w.npz", features_key="feats", labels_key="classes", normalize="l1")
    assert torch.allclose(l1.images.abs().sum(1), torch.ones(len(y)), atol=1e-5)


def test_split_placeholder_and_episodes(tmp_path, arrays):
    x, y = arrays
    for split in ("train", "test"):
        np.savez(tmp_path / f"mine_{split}.npz", X=x, y=y)
    options = VectorsConfig(path=str(tmp_path / "mine_{split}.npz"), min_per_class=8)
    data = build("test", None, options)
    ep = TaskSampler(data, way=5, shot=1, query=3, seed=0).sample(2)
    assert ep.support_x.shape == (2, 5, 800) and ep.query_x.shape == (2, 15, 800)
    with pytest.raises(FewShotError, match="does not exist"):
        build("val", None, options)


def test_domain_adaptation_halves_share_the_source_classes(data_root):
    options = VectorsConfig(files={"source": f"{SURF}/amazon_SURF_L10.mat", "target": f"{SURF}/webcam_SURF_L10.mat"},
                            features_key="fts", labels_key="labels")
    source = build("source", str(data_root), options)
    train, test = (build(s, str(data_root), options) for s in ("target_train", "target_test"))
    assert len(source.labels) == 958 and len(train.labels) + len(test.labels) == 295
    assert source.class_names == train.class_names == test.class_names
    whole = load_vectors(data_root / SURF / "webcam_SURF_L10.mat", features_key="fts", labels_key="labels")
    assert (train.class_sizes + test.class_sizes).tolist() == whole.class_sizes.tolist()
    rows = {tuple(r) for r in train.images[:, :50].tolist()}
    assert not any(tuple(r) in rows for r in test.images[:, :50].tolist())  # disjoint halves
    again = build("target_train", str(data_root), options)
    assert torch.equal(again.images, train.images)  # fixed by split_seed, not the run seed
    with pytest.raises(FewShotError, match="no file for split 'val'"):
        build("val", str(data_root), options)


def test_a_target_without_a_source_class_is_refused(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "s.npz", X=x, y=y)
    np.savez(tmp_path / "t.npz", X=x[y != 3], y=y[y != 3])
    options = VectorsConfig(files={"source": str(tmp_path / "s.npz"), "target": str(tmp_path / "t.npz")})
    with pytest.raises(FewShotError, match="same classes as the source domain; it lacks 3"):
        build("target_train", None, options)


def _csv(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("label,a,b\n1,0.5,1\n2,0.5\n", "line 3 has 2 field"),
    ("label,a,b\n1,0.5,1\n2,0.5,abc\n", "line 3, column 'b' is 'abc', not a number"),
    ("label,a,b\n1,0.5,1\n2,,1\n", "line 3, column 'a' is empty"),
    ("label,a,b\n1,0.5,nan\n2,0.5,1\n", "line 2, column 'b' is 'nan'; features must be finite"),
    ("label,a,b\n1,0.5,inf\n2,0.5,1\n", "finite"),
    ("class,a,b\n1,0.5,1\n2,0.5,1\n", "no label column 'label'; its columns are 'class', 'a', 'b'"),
    ("label,a,b\n1,0.5,1\n1,0.5,1\n", "1 class"),
    ("label,a,b\n1,0.5,1\n ,0.5,1\n", "line 3 has an empty label"),
])
def test_bad_csv_fails_in_one_line(tmp_path, text, message):
    with pytest.raises(FewShotError, match=message) as info:
        load_vectors(_csv(tmp_path, text))
    assert "\n" not in str(info.value)


def test_bad_arrays_fail_in_one_line(tmp_path, arrays):
    x, y = arrays
    bad = x.copy()
    bad[4, 7] = np.nan
    np.savez(tmp_path / "nan.npz", X=bad, y=y)
    with pytest.raises(FewShotError, match="NaN or infinite .first: example 5, column 8"):
        load_vectors(tmp_path / "nan.npz")
    np.savez(tmp_path / "short.npz", X=x, y=y[:-1])
    with pytest.raises(FewShotError, match="157 feature rows but 156 labels"):
        load_vectors(tmp_path / "short.npz")
    np.savez(tmp_path / "keys.npz", fts=x, labels=y)
    with pytest.raises(FewShotError, match="no features array 'X' .it has 'fts', 'labels'.; set data.options"):
        load_vectors(tmp_path / "keys.npz")
    np.savez(tmp_path / "frac.npz", X=x, y=y + 0.5)
    with pytest.raises(FewShotError, match="labels must be integers or words"):
        load_vectors(tmp_path / "frac.npz")
    np.savez(tmp_path / "cube.npz", X=x.reshape(157, 20, 40), y=y)
    with pytest.raises(FewShotError, match="2-d array"):
        load_vectors(tmp_path / "cube.npz")
    np.savez(tmp_path / "ok.npz", X=x, y=y)
    with pytest.raises(FewShotError, match="10 classes have fewer than 25 examples.*'1' \\(12\\)"):
        load_vectors(tmp_path / "ok.npz", min_per_class=25)
    np.save(tmp_path / "X.npy", x)
    with pytest.raises(FewShotError, match="is one array; point data.options.path at the folder"):
        load_vectors(tmp_path / "X.npy")


def test_options_are_checked():
    with pytest.raises(FewShotError, match="set one of data.options.path"):
        VectorsConfig()
    with pytest.raises(FewShotError, match="normalize"):
        VectorsConfig(path="x.npz", normalize="zscore")
    with pytest.raises(FewShotError, match="format"):
        VectorsConfig(path="x.npz", format="parquet")


def test_cli_reports_a_bad_file_in_one_line_with_exit_2(tmp_path, capsys):
    from fewshot.cli import main

    _csv(tmp_path, "label,a,b\n1,0.5,1\n2,0.5,abc\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: r
experiment: episodic
data: {{name: vectors, options: {{path: {tmp_path / 'bad.csv'}}}}}
model: {{name: mlp, options: {{in_features: 2}}}}
method: {{name: protonet}}
train: {{way: 2, shot: 1, query: 1, iterations: 1, device: cpu}}
eval: {{way: 2, shot: 1, query: 1, episodes: 1}}
""")
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fewshot: error: ") and "column 'b' is 'abc', not a number" in err
    assert len(err.splitlines()) == 1
