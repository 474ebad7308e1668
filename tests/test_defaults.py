"""The default-model table cites our results: every figure in fewshot.defaults equals the committed results files."""

import json
import re
from pathlib import Path

import pytest

from fewshot import defaults

REPO = Path(__file__).resolve().parents[1]


def _cell(cell: str) -> tuple[int, int]:
    way, shot = cell.rstrip("s").split("w")
    return int(way), int(shot)


def test_image_figures_equal_the_results_files():
    """Every zoo row of results/omniglot.json and every 20-way row of results/any_way.json with the head a task of
    more classes starts from by default (its method's) is in the table, with its figure; nothing else is."""
    from fewshot.methods.heads import OTHER_WAY_INIT, REPTILE_OTHER_WAY_INIT

    def more_way_init(stem: str) -> str:
        return REPTILE_OTHER_WAY_INIT if defaults.zoo_model(stem).startswith("reptile") else OTHER_WAY_INIT

    rows = json.loads((REPO / defaults.IMAGE_SOURCE).read_text())["results"]
    measured = {(Path(r["checkpoint"]).stem, *_cell(r["cell"])):
                defaults.Figure(round(100 * r["accuracy"], 2), round(100 * r["ci95"], 2), r["episodes"],
                                defaults.IMAGE_SOURCE) for r in rows}
    any_way = json.loads((REPO / defaults.ANY_WAY_SOURCE).read_text())["results"]
    measured |= {(Path(r["checkpoint"]).stem, r["way"], r["shot"]):
                 defaults.Figure(round(100 * r["accuracy"], 2), round(100 * r["ci95"], 2), r["episodes"],
                                 defaults.ANY_WAY_SOURCE) for r in any_way
                 if r["way"] == 20 and r["init"] == more_way_init(Path(r["checkpoint"]).stem)}
    assert defaults.IMAGE_FIGURES == measured
    assert {way for (_, way, _) in defaults.IMAGE_FIGURES} == set(defaults.IMAGE_WAYS)
    for (name, _, _) in defaults.IMAGE_FIGURES:
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
    ("images", 1, 5, "omniglot_5w1s_metasgd.safetensors", "98.74 ± 0.19% on Omniglot 5-way 1-shot"),
    ("images", 1, 3, "omniglot_5w1s_metasgd.safetensors", "98.74 ± 0.19% on Omniglot 5-way 1-shot"),
    ("images", 1, 20, "omniglot_20w1s_protonet_trainval.safetensors", "94.89 ± 0.23% on Omniglot 20-way 1-shot"),
    ("images", 5, 20, "omniglot_20w5s_protonet.safetensors", "98.48 ± 0.08% on Omniglot 20-way 5-shot"),
    ("images", 5, 6, "omniglot_20w5s_protonet.safetensors", "98.48 ± 0.08% on Omniglot 20-way 5-shot"),
    ("text", 1, 5, "clinc150_5w1s_features_minilm", "mean 88.12%"),
    ("text", 5, 5, "clinc150_5w5s_finetune_minilm", "mean 96.43%"),
    ("text", 10, 150, "clinc150_10s_all_finetune_minilm", "mean 86.53%"),
])
def test_choice_names_the_best_figure(modality, shots, way, model, figure):
    choice = defaults.choose(modality, shots, way)
    assert Path(choice.model).name == model and figure in choice.reason and choice.source in choice.reason


def test_method_narrows_the_choice():
    assert defaults.choose("images", 5, 20, "protonet").method == "protonet"
    assert Path(defaults.choose("images", 1, 5, "protonet").model).name == "omniglot_20w1s_protonet.safetensors"
    assert Path(defaults.choose("images", 1, 5, "metaoptnet").model).name == "omniglot_5w1s_metaoptnet.safetensors"
    assert defaults.choose("text", 12, 40, "features").model == "clinc150_10s_all_features_minilm"
    with pytest.raises(Exception, match="no measured MiniLM method 'setfit' at 10"):
        defaults.choose("text", 10, 5, "setfit")
    with pytest.raises(Exception, match="no zoo image model for method 'nosuch' measured at 1 shot with 5 classes"):
        defaults.choose("images", 1, 5, "nosuch")
    # measured at 20-way 5-shot, but not at 5-way 5-shot: no figure for 5 classes
    assert defaults.IMAGE_FIGURES[("omniglot_5w1s_mamlpp", 20, 5)]
    with pytest.raises(Exception, match="no zoo image model for method 'mamlpp' measured at 5 shots with 5 classes; "
                                        "there are anil, baseline_conv4, fomaml, maml, metaoptnet, protonet, reptile "
                                        "\\(or give a checkpoint with --model\\)$"):
        defaults.choose("images", 5, 5, "mamlpp")


def test_a_model_with_a_fixed_output_layer_takes_only_its_trained_classes(monkeypatch):
    """A zoo method that needs an output layer and cannot build another is a candidate only at its trained way."""
    from types import SimpleNamespace

    from fewshot import registry

    fixed = SimpleNamespace(needs_head=True, builds_head=False)
    monkeypatch.setitem(registry.METHODS, "metaoptnet", SimpleNamespace(builder=lambda: fixed))
    assert defaults.choose("images", 1, 5, "metaoptnet").method == "metaoptnet"
    with pytest.raises(Exception, match="no zoo image model for method 'metaoptnet' takes 4 classes"):
        defaults.choose("images", 1, 4, "metaoptnet")


def test_more_classes_rank_by_the_figures_at_that_many_classes(monkeypatch):
    """A 5-way MAML-family model best on 5-way tasks is not the default for 6 or more classes: those rank by the
    20-way figures, where it is far lower (results/any_way.json)."""
    figures = dict(defaults.IMAGE_FIGURES)
    figures[("omniglot_5w1s_maml", 5, 1)] = defaults.Figure(99.99, 0.01, 600, defaults.IMAGE_SOURCE)
    monkeypatch.setattr(defaults, "IMAGE_FIGURES", figures)
    assert [defaults.choose("images", 1, way).method for way in (2, 5)] == ["maml", "maml"]
    for way in (6, 20, 50):
        choice = defaults.choose("images", 1, way)
        assert (choice.method, choice.way) == ("protonet_trainval", 20) and "20-way 1-shot" in choice.reason
    maml = defaults.choose("images", 1, 20, "maml")
    assert maml.way == 20 and maml.accuracy == max(figures[(n, 20, 1)].accuracy
                                                   for n in ("omniglot_5w1s_maml", "omniglot_5w5s_maml"))
    assert "scored 20-way" in maml.reason and defaults.ANY_WAY_SOURCE in maml.reason


def test_a_model_not_measured_with_so_many_classes_says_so():
    choice = defaults.choose("images", 1, 12, "metaoptnet")
    assert (choice.way, choice.accuracy) == (5, 97.21)
    assert choice.reason.endswith("not measured with more than 5 classes (this support set has 12)")
    assert "not measured" not in defaults.choose("images", 1, 4, "metaoptnet").reason
    assert defaults.choose("images", 1, 21).reason.endswith("not measured with more than 20 classes "
                                                            "(this support set has 21)")


def test_a_named_zoo_model_gets_its_own_figure(tmp_path):
    """``fit --model zoo/...`` reports that checkpoint's figure at the support set's number of classes, not the best of
    its method; a model outside the zoo has none, even under a zoo checkpoint's name."""
    zoo = defaults.zoo_dir()
    assert defaults.figure_for(str(zoo / "omniglot_5w1s_protonet.safetensors"), "images", 1, 5).accuracy == 97.13
    trainval = defaults.figure_for(str(zoo / "omniglot_20w1s_protonet_trainval.safetensors"), "images", 1, 3)
    assert (trainval.accuracy, trainval.method) == (98.50, "protonet_trainval") and "scored 5-way" in trainval.reason
    trainval = defaults.figure_for(str(zoo / "omniglot_20w1s_protonet_trainval.safetensors"), "images", 1, 7)
    assert (trainval.accuracy, trainval.way) == (94.89, 20) and "scored" not in trainval.reason
    maml = defaults.figure_for(str(zoo / "omniglot_5w1s_maml.safetensors"), "images", 5, 20)  # 20-way at 1 and 5 shots
    assert (maml.accuracy, maml.shots) == (defaults.IMAGE_FIGURES[("omniglot_5w1s_maml", 20, 5)].accuracy, 5)
    reptile = str(zoo / "omniglot_5w1s_reptile.safetensors")  # one checkpoint scored at 1 and 5 shots, and 20-way
    assert [defaults.figure_for(reptile, "images", shots, 5).accuracy for shots in (1, 5)] == [
        defaults.IMAGE_FIGURES[("omniglot_5w1s_reptile", 5, shots)].accuracy for shots in (1, 5)]
    assert defaults.figure_for(reptile, "images", 5, 7).reason.endswith("20-way 5-shot, 300 test episodes "
                                                                        "(results/any_way.json)")
    unmeasured = defaults.figure_for(str(zoo / "omniglot_5w1s_metaoptnet.safetensors"), "images", 1, 20)
    assert unmeasured.way == 5 and "not measured with more than 5 classes" in unmeasured.reason
    assert defaults.figure_for("zoo/somebody_elses.safetensors", "images", 1, 5) is None
    for own in ("runs/omniglot_5w1s_maml", "omniglot_5w1s_maml", tmp_path / "omniglot_5w1s_maml.safetensors"):
        assert defaults.figure_for(str(own), "images", 1, 5) is None  # the user's own run or copy: not measured


def test_a_figure_measured_without_the_users_settings_says_so():
    assert defaults.measured_as([]) == ""
    assert defaults.measured_as(["method.head_init=zeros"]) == (" (measured with the model's own settings, not with "
                                                                "--set method.head_init=zeros)")
    choice, line = defaults.model_note(str(defaults.zoo_dir() / "omniglot_5w1s_metasgd.safetensors"), "images", 1, 5,
                                       ["method.test_inner_steps=20"])
    assert line == f"model: {choice.reason} (measured with the model's own settings, not with --set " \
                   "method.test_inner_steps=20)"
    assert defaults.model_note("runs/omniglot_5w1s_metasgd", "images", 1, 5) is None


def test_a_zoo_name_gives_the_cell_it_was_trained_on():
    assert defaults.zoo_cell("omniglot_20w1s_protonet_trainval") == (20, 1)
    assert defaults.zoo_cell("omniglot_5w5s_fomaml") == (5, 5)
    assert defaults.zoo_way("omniglot_20w5s_protonet") == 20
