"""Shipped YAML recipes, named ``<dataset>_<way>w<shot>s_<method>`` (or ``<source>_<target>_<method>``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from fewshot.errors import FewShotError


def recipe_dir() -> Path:
    return Path(str(resources.files("fewshot.recipes")))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = recipe_dir() / f"{name}.yaml"
    if not path.exists():
        names = recipe_names()
        close = [n for n in names if name in n] or names
        raise FewShotError(f"no recipe or file named {name!r}; recipes include: {', '.join(close[:12])}")
    return path


def recipe_summary(name: str) -> str:
    raw = yaml.safe_load(recipe_path(name).read_text()) or {}
    return str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
