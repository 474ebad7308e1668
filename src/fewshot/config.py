"""Run configuration: dataclasses validated on load; a recipe is YAML of these.

Component options (``data.options``, ``model.options``, ``method.options``) are validated against the options
dataclass that the component registers (see :mod:`fewshot.registry`), so a typo fails at load time, naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import yaml

from fewshot.errors import FewShotError
from fewshot.hardware import PRECISIONS

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2^32 - 1 (what every random generator fewshot seeds accepts, with room for per-iteration seeds)."""
SCHEDULES = ("constant", "linear", "step", "cosine", "inverse")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class ComponentConfig:
    """A registered component (data set, model or method) by name, with its options."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig(ComponentConfig):
    root: str | None = None
    """Data root (else ``$FEWSHOT_DATA``); ``--data-root`` overrides it."""


@dataclass
class TrainConfig:
    way: int = 5
    shot: int = 1
    query: int = 15
    meta_batch: int = 32
    """Tasks per meta-update (episodic kinds of run)."""
    batch_size: int = 64
    """Examples per training step (the non-episodic kinds: ``supervised``, ``domain_adaptation``)."""
    iterations: int = 1000
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_final: float = 0.0
    """End value of the ``linear`` and ``cosine`` schedules."""
    schedule: str = "constant"
    """How the learning rate moves over training: ``constant``, ``linear``, ``cosine``, ``step`` or ``inverse``."""
    step_size: int = 2000
    """``step`` schedule: multiply the rate by ``gamma`` every ``step_size`` iterations."""
    gamma: float = 0.5
    anneal_alpha: float = 10.0
    anneal_beta: float = 0.75
    """``inverse`` schedule (DANN's, Ganin & Lempitsky 2015): ``lr / (1 + anneal_alpha p) ** anneal_beta`` with
    training progress ``p = iteration / iterations``; the paper's values are 10 and 0.75."""
    weight_decay: float = 0.0
    momentum: float = 0.0
    """Momentum of the ``sgd`` optimizer (ignored by Adam and AdamW)."""
    grad_clip: float = 0.0
    """Clip the meta-gradient norm to this (0 = off)."""
    val_every: int = 500
    val_episodes: int = 200
    checkpoint_every: int = 500
    keep_best: int = 1
    """How many of the best-validated weights a run keeps: 1, the best (``checkpoints/best.safetensors``); ``K > 1``,
    also the ``K`` best as ``checkpoints/top/<iteration>.safetensors`` (weights only), which
    ``fewshot eval --ensemble K`` scores together (MAML++, Antoniou et al. 2019, scores its top 5 so). Only runs
    scored on test episodes (experiments built on ``EpisodicExperiment``: ``episodic``, ``supervised``,
    ``pretrained``, ``text_episodic``) may keep more than 1."""
    log_every: int = 10
    seed: int = 0
    threads: int = 0
    """Torch threads (0 = leave torch's default)."""
    precision: str = "fp32"
    """``bf16``: run each training step under bfloat16 autocast (opt-in; weights, optimizer and evaluation stay
    fp32). Faster where the CPU has bf16 instructions (AVX512-BF16, AMX) or on a GPU; check accuracy against fp32."""
    device: str = "auto"
    """Where the method runs: ``cpu``, ``cuda`` (or ``cuda:N``), or ``auto`` (the GPU when torch sees one). Data
    sampling, episode order and the evaluation record stay the same on every device."""
    dist_timeout: float = 300.0
    """Distributed runs (``torchrun``): seconds a process waits for the others (joining, or any collective step)
    before the job ends with an error naming the cause; a process that dies ends the job at once."""
    world_size: int = 1
    """Recorded, not chosen: the number of processes the run trains with (``torchrun`` sets it; 1 otherwise). A run
    resumes only with the same number, so that it continues bit-identically."""

    def use_threads(self) -> None:
        """Apply ``threads`` to torch (training, evaluation and ``fewshot classify`` all follow the run's setting)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def torch_device(self) -> torch.device:
        """The resolved ``device``; a clear error when a GPU is asked for and torch sees none."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise FewShotError(f"train.device={self.device} but torch sees no GPU (torch {torch.__version__}, "
                               f"built {'with' if torch.version.cuda else 'without'} CUDA); use train.device=cpu")
        return torch.device(self.device)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in DEVICES or (":" in self.device and not self.device.startswith("cuda:")):
            raise FewShotError(f"train.device must be one of {DEVICES} (or cuda:N), got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise FewShotError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.iterations < 0:
            raise FewShotError(f"train.iterations must be >= 0 (0: nothing to train), got {self.iterations}")
        for name in ("way", "shot", "meta_batch", "batch_size", "val_every", "checkpoint_every", "keep_best",
                     "log_every", "step_size"):
            if getattr(self, name) < 1:
                raise FewShotError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("query", "val_episodes", "threads"):
            if getattr(self, name) < 0:
                raise FewShotError(f"train.{name} must be >= 0, got {getattr(self, name)}"
                                   + (" (0: leave torch's default)" if name == "threads" else ""))
        for name in ("weight_decay", "grad_clip", "lr_final"):
            if not getattr(self, name) >= 0:
                raise FewShotError(f"train.{name} must be >= 0, got {getattr(self, name)}"
                                   + (" (0: off)" if name == "grad_clip" else ""))
        if not self.gamma > 0:
            raise FewShotError(f"train.gamma must be > 0, got {self.gamma}")
        for name in ("anneal_alpha", "anneal_beta"):
            if not getattr(self, name) >= 0:
                raise FewShotError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        check_seed("train.seed", self.seed)
        if self.optimizer not in OPTIMIZERS:
            raise FewShotError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise FewShotError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise FewShotError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise FewShotError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not self.dist_timeout > 0 or self.world_size < 1:
            raise FewShotError(f"train.dist_timeout must be > 0 seconds and train.world_size >= 1, got "
                               f"{self.dist_timeout}, {self.world_size}")


@dataclass
class EvalConfig:
    way: int = 5
    shot: int = 1
    query: int = 15
    episodes: int = 600
    seed: int = 0
    split: str = "test"

    def __post_init__(self) -> None:
        for name in ("way", "shot", "query", "episodes"):
            if getattr(self, name) < 1:
                raise FewShotError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        check_seed("eval.seed", self.seed)
        check_split("eval.split", self.split)


def check_split(key: str, split: str) -> None:
    """A split is a plain name (``test``, ``target_test``): it also names evaluation record files."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise FewShotError(f"{key} must be a split name like test or val, got {split!r}")


def check_seed(key: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise FewShotError(f"{key} must be in 0 .. {MAX_SEED}, got {seed}")


@dataclass
class RunConfig:
    name: str = "run"
    description: str = ""
    experiment: str = "episodic"
    """The kind of run: how training batches are made and runs are scored (see ``fewshot.registry.EXPERIMENTS``)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ComponentConfig = field(default_factory=ComponentConfig)
    method: ComponentConfig = field(default_factory=ComponentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        config = from_dict(cls, upgrade(data))
        validate_components(config)
        return config


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name the dotted key."""
    if not isinstance(data, dict):
        raise FewShotError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    odd = [key for key in data if not isinstance(key, str)]
    if odd:
        raise FewShotError(f"{path or 'config'} has a key that is not a word: {odd[0]!r}")
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise FewShotError(f"unknown config key '{where}{unknown[0]}'; known keys: {', '.join(sorted(names))}")
    values = {key: coerce(hints[key], value, f"{path}.{key}" if path else key) for key, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise FewShotError(f"{path or 'config'}: {exc}") from exc


def coerce(hint: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type ``hint`` (int, float, bool, str, optional, dict, dataclass)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, path)
            except FewShotError as exc:
                errors.append(str(exc))
        raise FewShotError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise FewShotError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FewShotError(f"{path} must be a list, got {value!r}")
        return list(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise FewShotError(f"{path} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise FewShotError(f"{path} must be an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise FewShotError(f"{path} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise FewShotError(f"{path} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise FewShotError(f"{path} must be a string, got {value!r}")
    return value


def validate_components(config: RunConfig) -> None:
    """Check the component names and their options against what each component registered."""
    from fewshot import registry

    for section, table in (("data", registry.DATASETS), ("model", registry.MODELS), ("method", registry.METHODS)):
        component: ComponentConfig = getattr(config, section)
        if component.name not in table:
            raise FewShotError(f"unknown {section}.name {component.name!r}; known: {', '.join(sorted(table))}")
        from_dict(table[component.name].options_class(), component.options, f"{section}")
    if config.experiment not in registry.EXPERIMENTS:
        raise FewShotError(f"unknown experiment {config.experiment!r}; known: "
                           f"{', '.join(sorted(registry.EXPERIMENTS))}")


RENAMED_OPTIONS = {("method", "prompt", "scale"): "temperature", ("method", "features", "scale"): "temperature"}
"""Component options renamed since fewshot 0.1.0: (section, component, old key) -> new key."""
NON_EPISODIC = ("supervised", "domain_adaptation")
ADDED_OPTIONS = {("method", "maml", "transductive"): True, ("method", "reptile", "transductive"): True,
                 ("method", "anil", "transductive"): True}
"""Component options added since fewshot 0.1.0 whose default differs from what earlier configs did: (section,
component, key) -> the value that keeps an earlier config's behaviour. MAML, Reptile and ANIL scored a task's queries
in one batch (``transductive: true``) before the option existed and the default became per-query scoring."""


DANN_ANNEALING = {"anneal_lr": True, "alpha": 10.0, "beta": 0.75}
"""Options of method ``dann`` removed when its learning-rate annealing (gradients scaled by ``1 / (1 + alpha p) **
beta``, on unless ``anneal_lr: false``) became the engine's ``inverse`` schedule, with their defaults then."""


def _upgrade_dann(data: dict[str, Any]) -> dict[str, Any]:
    """A ``dann`` config that names the removed annealing options, with them moved to ``train``: ``anneal_lr:
    true`` (or absent) becomes ``train.schedule: inverse`` with ``train.anneal_alpha`` = ``alpha`` and
    ``train.anneal_beta`` = ``beta``; ``anneal_lr: false`` just drops them. (A config that relied on the default
    ``anneal_lr: true`` without naming any of them cannot be told from today's: it trains at ``train.schedule``'s
    rate.)"""
    method = data.get("method")
    options = method.get("options") if isinstance(method, dict) and method.get("name") == "dann" else None
    if not isinstance(options, dict) or not any(key in options for key in DANN_ANNEALING):
        return data
    data = _deep_copy(data)
    options = data["method"]["options"]
    anneal_lr, alpha, beta = (options.pop(key, default) for key, default in DANN_ANNEALING.items())
    if not coerce(bool, anneal_lr, "method.options.anneal_lr"):
        return data
    train = data.setdefault("train", {})
    if not isinstance(train, dict):
        return data  # from_dict names the error
    schedule = train.get("schedule", "constant")
    if schedule not in ("constant", "inverse"):
        raise FewShotError(f"method.anneal_lr (removed) annealed DANN's gradients on top of train.schedule="
                           f"{schedule}; that product is not offered any more: use train.schedule: inverse (the "
                           f"paper's annealing, what anneal_lr did) or drop anneal_lr")
    train["schedule"] = "inverse"
    train.setdefault("anneal_alpha", alpha)
    train.setdefault("anneal_beta", beta)
    return data


def upgrade(data: Any) -> Any:
    """A config written by an earlier fewshot (a checkpoint's, a run folder's, a recipe) in today's keys.

    ``kind`` became ``experiment``; the non-episodic kinds' examples per step moved from ``train.meta_batch`` to
    ``train.batch_size``; a cosine head's ``scale`` became ``temperature``; MAML, Reptile and ANIL get
    ``transductive: true`` unless the config says otherwise (:data:`ADDED_OPTIONS`: what they did then); DANN's
    annealing options move to ``train.schedule: inverse`` (:data:`DANN_ANNEALING`). A config already in today's keys
    comes back unchanged (the same object); the caller's mapping is never modified.
    """
    if not isinstance(data, dict):
        return data
    data = _upgrade_dann(data)
    if "kind" not in data:
        return data
    data = _deep_copy(data)
    kind = data.pop("kind")
    data.setdefault("experiment", kind)
    train = data.get("train")
    if kind in NON_EPISODIC and isinstance(train, dict) and "meta_batch" in train:
        train.setdefault("batch_size", train.pop("meta_batch"))
    for (section, name, old), new in RENAMED_OPTIONS.items():
        component = data.get(section)
        if isinstance(component, dict) and component.get("name") == name:
            options = component.get("options")
            if isinstance(options, dict) and old in options:
                options.setdefault(new, options.pop(old))
    for (section, name, key), value in ADDED_OPTIONS.items():
        component = data.get(section)
        if isinstance(component, dict) and component.get("name") == name:
            if component.get("options") is None:
                component["options"] = {}
            if isinstance(component["options"], dict):
                component["options"].setdefault(key, value)
    return data


def component_options(component: ComponentConfig, table: dict, section: str) -> Any:
    """The validated options dataclass instance of a component."""
    return from_dict(table[component.name].options_class(), component.options, section)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a raw config mapping.

    Keys are dotted paths (``train.meta_batch=16``, ``method.inner_steps=5`` — component options may skip
    ``.options``). A bare key that names exactly one leaf (``meta_batch=16``) is accepted too.
    Values are parsed as YAML (``5``, ``0.4``, ``true``, ``[1, 2]``); only ``true``/``false`` are booleans, so
    ``off``, ``on``, ``yes`` and ``no`` stay words.
    """
    raw = _deep_copy(upgrade(raw))
    for item in overrides:
        if "=" not in item:
            raise FewShotError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        value = parse_yaml(text, f"override {item!r}") if text else ""
        if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
            value = text.strip()  # YAML 1.1 reads off/on/yes/no as booleans; keep them as words (method.cache=off)
        path = _resolve_key(raw, key.strip())
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FewShotError(f"override {key!r}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


COMPONENT_SECTIONS = ("data", "model", "method")


def _resolve_key(raw: dict[str, Any], key: str) -> list[str]:
    parts = key.split(".")
    if len(parts) == 1:
        if parts[0] in raw or parts[0] in {f.name for f in dataclasses.fields(RunConfig)}:
            return parts
        matches = _leaf_paths(raw, parts[0])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise FewShotError(f"override key {key!r} is ambiguous: {', '.join('.'.join(m) for m in matches)}")
        raise FewShotError(f"unknown override key {key!r}")
    section_fields = {"train": TrainConfig, "eval": EvalConfig}
    if parts[0] in section_fields:
        return parts
    if parts[0] in COMPONENT_SECTIONS and parts[1] not in ("name", "options", "root"):
        return [parts[0], "options", *parts[1:]]
    return parts


def _leaf_paths(raw: dict[str, Any], leaf: str) -> list[list[str]]:
    found: list[list[str]] = []
    for section, fields_cls in (("train", TrainConfig), ("eval", EvalConfig)):
        if leaf in {f.name for f in dataclasses.fields(fields_cls)}:
            found.append([section, leaf])
    for section in COMPONENT_SECTIONS:
        if leaf in (raw.get(section) or {}).get("options", {}):
            found.append([section, "options", leaf])
    if len(found) > 1:  # a leaf the recipe sets explicitly wins over a default of another section
        explicit = [p for p in found if _has_path(raw, p)]
        if len(explicit) == 1:
            return explicit
    return found


def _has_path(raw: dict[str, Any], path: list[str]) -> bool:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def load_raw(source: str | Path) -> dict[str, Any]:
    """A recipe name (``omniglot_5w1s_maml``) or a YAML file path, as a raw mapping."""
    from fewshot.recipes import recipe_path

    path = Path(source)
    if not path.exists():
        path = recipe_path(str(source))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FewShotError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FewShotError(f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); save it as "
                           f"UTF-8") from exc
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise FewShotError(f"{path} must contain a mapping")
    return raw


class _ConfigLoader(yaml.SafeLoader):
    """YAML without aliases: a config is a small tree, and aliases can make a few hundred bytes expand to gigabytes
    ("billion laughs"); anchors alone are harmless."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise FewShotError(f"{self.name}: line {event.start_mark.line + 1} uses the YAML alias *{event.anchor}; "
                               f"fewshot configs do not take aliases: write the values out")
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` as YAML (safe types, no aliases); errors name ``source``."""
    loader = _ConfigLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise FewShotError(f"{source} is not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise FewShotError(f"{source} is nested too deeply to be a config") from exc
    finally:
        loader.dispose()


def load_config(source: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return RunConfig.from_dict(apply_overrides(load_raw(source), overrides or []))
