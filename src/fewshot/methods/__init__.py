"""Few-shot methods, one per file, all behind :class:`~fewshot.methods.base.Method`."""

from fewshot.methods.base import Method
from fewshot.methods.maml import MAML, MAMLConfig
from fewshot.methods.protonet import ProtoNet, ProtoNetConfig
from fewshot.methods.reptile import Reptile, ReptileConfig

__all__ = ["Method", "MAML", "MAMLConfig", "ProtoNet", "ProtoNetConfig", "Reptile", "ReptileConfig"]
