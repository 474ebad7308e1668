"""fewshot: meta-learning and transfer learning from very few labelled examples."""

from fewshot.errors import FewShotError
from fewshot.registry import register_dataset, register_experiment, register_method, register_model

__version__ = "0.1.0"
__all__ = ["FewShotError", "__version__", "register_dataset", "register_experiment", "register_method",
           "register_model"]
