"""fewshot: meta-learning and transfer learning from very few labelled examples."""

from typing import Any

from fewshot.errors import FewShotError
from fewshot.registry import register_dataset, register_experiment, register_method, register_model

__version__ = "0.1.0"
__all__ = ["FewShotError", "__version__", "fit", "from_pretrained", "register_dataset", "register_experiment",
           "register_method", "register_model"]


def __getattr__(name: str) -> Any:
    """``fewshot.fit`` and ``fewshot.from_pretrained`` (:mod:`fewshot.classifier`), imported on first use."""
    if name in ("fit", "from_pretrained", "Classifier"):
        from fewshot import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'fewshot' has no attribute {name!r}")
