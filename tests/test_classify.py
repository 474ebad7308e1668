"""Classify your own examples: real Omniglot PNGs in a folder, real CLINC150 sentences in a CSV."""

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from fewshot.cli import main
from fewshot.errors import FewShotError

ZOO = Path(__file__).resolve().parents[1] / "zoo"


def write_omniglot_folder(data_root, tmp_path, chars=("Kannada/character01", "Keble/character02",
                                                       "Tibetan/character03", "ULOG/character04")):
    """A user's folder: original 105x105 PNGs (dark strokes on white) of test-split characters."""
    support, queries = tmp_path / "support", []
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        for char in chars:
            files = sorted(n for n in zf.namelist() if n.startswith(f"images_evaluation/{char}/") and n.endswith("png"))
            (support / char.replace("/", "_")).mkdir(parents=True)
            for i, name in enumerate(files[:6]):
                image = Image.open(io.BytesIO(zf.read(name)))
                if i == 0:
                    image.save(support / char.replace("/", "_") / "example.png")
                else:
                    path = tmp_path / "queries" / f"{char.replace('/', '_')}__{i}.png"
                    path.parent.mkdir(exist_ok=True)
                    image.save(path)
                    queries.append(path)
    return support, queries


@pytest.mark.skipif(not (ZOO / "omniglot_5w1s_protonet.safetensors").exists(), reason="zoo checkpoint not shipped")
def test_classify_own_images_with_shipped_protonet(data_root, tmp_path, capsys):
    support, queries = write_omniglot_folder(data_root, tmp_path)
    assert main(["classify", str(ZOO / "omniglot_5w1s_protonet.safetensors"), str(support),
                 str(tmp_path / "queries"), "--json"]) == 0
    printed = capsys.readouterr()
    rows = [json.loads(line) for line in printed.out.splitlines()]
    assert len(rows) == len(queries) == 20
    assert ("fewshot: note: model: omniglot_5w1s_protonet.safetensors (protonet): 97.13 ± 0.31% on Omniglot 5-way "
            "1-shot") in printed.err  # its measured figure, on stderr beside the answers
    correct = sum(Path(r["query"]).name.split("__")[0] == r["label"] for r in rows)
    assert correct >= 16, rows  # 4-way one-shot on unseen alphabets; chance is 5 of 20


@pytest.mark.parametrize("recipe", ["clinc150_5w5s_features_minilm",
                                    pytest.param("clinc150_5w5s_setfit_minilm", marks=pytest.mark.slow)])
def test_classify_own_text_with_pretrained_recipe(recipe, data_root, tmp_path, capsys):
    data = json.loads((data_root / "clinc150" / "data_full.json").read_text())
    intents = ["book_flight", "weather", "transfer", "recipe"]
    rows = {i: [t for t, label in data["test"] if label == i] for i in intents}
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for intent in intents:
            for text in rows[intent][:5]:
                writer.writerow([text, intent])
    queries = [(t, i) for i in intents for t in rows[i][5:10]]
    assert main(["classify", recipe, str(path), *[q for q, _ in queries], "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    correct = sum(o["label"] == i for o, (_, i) in zip(out, queries))
    assert correct >= 16, out


def test_classify_bad_input(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    assert main(["classify", "clinc150_5w5s_features_minilm", str(tmp_path / "empty.csv"), "hello"]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("x")
    assert main(["classify", "clinc150_5w5s_features_minilm", str(tmp_path / "x.txt"), "hello"]) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert main(["classify", "omniglot_5w1s_maml", str(tmp_path), "q.png"]) == 2
    assert "class folder" in capsys.readouterr().err or "must be trained" in capsys.readouterr().err
    with pytest.raises(FewShotError):
        from fewshot.classify import load_model

        load_model("omniglot_5w1s_maml", 5)
