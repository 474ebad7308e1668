"""fewshot: meta-learning and transfer learning from very few labelled examples."""

from fewshot.errors import FewShotError

__version__ = "0.1.0"
__all__ = ["FewShotError", "__version__"]
