"""Data sets and the episode (task) sampler."""

from fewshot.data.base import ClassDataset, TensorClassDataset
from fewshot.data.tasks import Episode, TaskSampler, fixed_episodes

__all__ = ["ClassDataset", "TensorClassDataset", "Episode", "TaskSampler", "fixed_episodes"]
