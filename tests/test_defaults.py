"""The default-model table cites our results: every figure in fewshot.defaults equals the committed results files."""

import json
import re
from pathlib import Path

import pytest

from fewshot import defaults

REPO = Path(__file__).resolve().parents[1]


def test_image_figures_equal_results_omniglot_json():
    rows = json.loads((REPO / defaults.IMAGE_SOURCE).read_text())["results"]
    measured = {(Path(r["checkpoint"]).stem, int(r["cell"][2])):
                (round(100 * r["accuracy"], 2), round(100 * r["ci95"], 2)) for r in rows
                if r["cell"].startswith("5w")}  # the defaults serve 5-way cells: 20-way checkpoints by their 5-way rows
    assert defaults.IMAGE_FIGURES == measured
    for (name, _) in defaults.IMAGE_FIGURES:
        assert (REPO / "zoo" / f"{name}.safetensors").is_file()


def _row(text: str, marker: str) -> list[float]:
    line = next(line for line in text.splitlines() if line.startswith("|") and marker in line)
    return [float(x) for x in re.findall(r"(\d+\.\d+) ±", line)]


def test_text_figures_equal_results_text_md():
    text = (REPO / defaults.TEXT_SOURCE).read_text()
    episodic = text[text.index("## Episodic 5-way"):text.index("ᴳ: run on")]
    all_classes = text[text.index("## All classes, 10 examples each"):text.index("Commands:")]
    for (method, shots), figures in defaults.TEXT_FIGURES.items():
        if shots == 10:
            row = _row(all_classes, f"`10s_all_{method}_minilm`")
            clinc, banking, hwu = row[1], row[0], row[2]  # the table's columns: BANKING77, CLINC150, HWU64
        else:
            row = _row(episodic, f"(`{method}_minilm`)")
            if method == "setfit":  # measured at 1 shot only
                row = [row[0], None, row[1], None, row[2], None]
            column = 0 if shots == 1 else 1
            clinc, banking, hwu = row[column], row[column + 2], row[column + 4]
        assert figures == (clinc, banking, hwu), (method, shots)


@pytest.mark.parametrize("modality, shots, way, model, figure", [
    ("images", 1, 20, "omniglot_20w1s_protonet_trainval.safetensors", "98.50 ± 0.23%"),
    ("images", 5, 20, "omniglot_20w5s_protonet.safetensors", "99.56 ± 0.10%"),
    ("text", 1, 5, "clinc150_5w1s_features_minilm", "mean 88.12%"),
    ("text", 5, 5, "clinc150_5w5s_finetune_minilm", "mean 96.43%"),
    ("text", 10, 150, "clinc150_10s_all_finetune_minilm", "mean 86.53%"),
])
def test_choice_names_the_best_figure(modality, shots, way, model, figure):
    choice = defaults.choose(modality, shots, way)
    assert Path(choice.model).name == model and figure in choice.reason and choice.source in choice.reason


def test_method_narrows_the_choice_and_fixed_heads_need_five_classes():
    assert defaults.choose("images", 5, 20, "protonet").method == "protonet"
    assert Path(defaults.choose("images", 1, 5, "protonet").model).name == "omniglot_20w1s_protonet.safetensors"
    assert Path(defaults.choose("images", 1, 5, "metaoptnet").model).name == "omniglot_5w1s_metaoptnet.safetensors"
    assert defaults.choose("text", 12, 40, "features").model == "clinc150_10s_all_features_minilm"
    assert all(defaults.choose("images", s, 7).method not in ("maml", "anil") for s in (1, 5))
    with pytest.raises(Exception, match="no measured MiniLM method 'setfit' at 10"):
        defaults.choose("text", 10, 5, "setfit")


def test_a_named_zoo_model_gets_its_own_figure():
    """``fit --model zoo/...`` reports that checkpoint's figure, not the best of its method."""
    assert defaults.figure_for("zoo/omniglot_5w1s_protonet.safetensors", "images", 1, 5).accuracy == 97.13
    trainval = defaults.figure_for("omniglot_20w1s_protonet_trainval", "images", 1, 7)
    assert (trainval.accuracy, trainval.method) == (98.50, "protonet_trainval") and "scored 5-way" in trainval.reason
    assert defaults.figure_for("zoo/somebody_elses.safetensors", "images", 1, 5) is None
