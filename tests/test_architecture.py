"""The layers keep their contracts: the engine, the CLI and classify reach methods, models and data sets only through
the contract modules and the registry, never by importing a concrete one or comparing its name."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fewshot"
GENERIC = ("engine", "cli.py", "classify.py", "classifier.py", "defaults.py", "onnx_export.py")
CONTRACTS = {"fewshot.methods.base", "fewshot.models.base", "fewshot.data.base", "fewshot.data.tasks",
             "fewshot.data.batches", "fewshot.data.inputs"}
USER_INPUT_READERS = {"fewshot.data.image_folder", "fewshot.data.csv_text",  # classify reads the user's own files
                      "fewshot.data.hf_disk"}
CONCRETE = ("fewshot.methods.", "fewshot.models.", "fewshot.data.")
NAMES = ("maml", "reptile", "protonet", "features", "finetune", "setfit", "dann", "prompt", "anil", "metaoptnet",
         "omniglot", "clinc150", "banking77", "hwu64", "mnist_usps", "conv4", "minilm", "smollm2", "digits_cnn",
         "efficientnet_lite0", "vectors", "mlp")


def _modules() -> list[Path]:
    files = []
    for place in GENERIC:
        path = PACKAGE / place
        files += sorted(path.glob("*.py")) if path.is_dir() else [path]
    return files


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_generic_layers_import_only_contracts(path):
    allowed = CONTRACTS | (USER_INPUT_READERS if path.name == "classify.py" else set())
    concrete = {m for m in _imports(ast.parse(path.read_text())) if m.startswith(CONCRETE) and m not in allowed}
    assert not concrete, f"{path.name} imports concrete components {sorted(concrete)}: ask a contract instead"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_generic_layers_compare_no_component_names(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            constants = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            assert not set(constants) & set(NAMES), f"{path.name}:{node.lineno} compares a component name"


def test_the_check_sees_a_concrete_import(tmp_path):
    """Negative control: the import check does flag a concrete method import."""
    tree = ast.parse("from fewshot.methods.maml import MAML\nif config.method.name == 'maml': pass\n")
    assert "fewshot.methods.maml" in _imports(tree)
    assert any(isinstance(n, ast.Compare) for n in ast.walk(tree))
