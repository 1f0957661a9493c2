"""Residual units of the CIFAR ResNets, and the shortcuts the stage builder puts into them.

All four unit classes share one constructor signature (torchvision style)::

    Unit(in_channels, channels, *, stride=1, shortcut=None)

``channels`` is the unit's inner width; the unit outputs ``channels * Unit.expansion``
channels. The stride (1, or 2 in the first unit of stages 2 and 3) sits in the unit's 3x3
conv. ``shortcut`` is built by the stage builder (:func:`ablate.models.resnet.make_shortcut`):
``None`` makes a plain unit (the same layers, the addition skipped); otherwise a module
mapping the unit's input to the unit's output shape. Units never read configuration.

Class attributes the network reads:

- ``expansion``: output channels per inner channel (1 basic, 4 bottleneck; 2015 sec. 4.1).
- ``preactivation``: True for the BN-ReLU-conv units of He et al. 2016; the network then
  drops the stem's BN-ReLU and adds a final BN-ReLU to the head.
- ``responses``: names of the submodules whose outputs are Fig. 7 layer responses
  (2015 sec. 4.2): the BN after each 3x3 conv of a post-activation unit ("after BN, before
  the nonlinearity or the addition"), the 3x3 conv itself in a pre-activation unit. The
  1x1 convs of bottleneck units are not 3x3 layers, so only the middle layer is a response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "PreActBlock",
    "PreActBottleneck",
    "Projection",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (a BN follows or precedes every conv)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A where the shape changes (2015 sec. 3.3): subsample by ``stride``, zero-pad the new channels.

    ``x[:, :, ::2, ::2]`` then zeros appended after the input's channels; no parameters,
    so a residual-A net has exactly the parameters of its plain twin.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"zero-padding shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (W, H, C) pairs: zeros after the last channel

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class Projection(nn.Sequential):
    """Options B and C (2015 sec. 3.3, eq. 2): 1x1 conv with the unit's stride, then BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def _add_shortcut(out: torch.Tensor, shortcut: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``out + shortcut(x)``; a plain unit (``shortcut is None``) skips the addition."""
    return out if shortcut is None else out + shortcut(x)


def _preact_shortcut_input(shortcut: nn.Module | None, x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """What a pre-activation unit's shortcut reads.

    A projection reads the pre-activated input ``pre = ReLU(BN(x))``, sharing the unit's
    first BN-ReLU with the residual branch (the usual arrangement for pre-activation units
    that change dimensions); parameter-free shortcuts (identity, option A) read ``x`` itself,
    so the signal path from the stem to the head stays free of nonlinearities (2016 sec. 3).
    """
    return pre if isinstance(shortcut, Projection) else x


class BasicBlock(nn.Module):
    """Post-activation basic unit (2015 sec. 4.2): 3x3 conv, BN, ReLU, 3x3 conv, BN, add, ReLU."""

    expansion = 1
    preactivation = False
    responses = ("bn1", "bn2")

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(_add_shortcut(out, self.shortcut, x))  # the second ReLU comes after the addition


class Bottleneck(nn.Module):
    """Post-activation bottleneck unit (2015 sec. 4.1, Fig. 5 right).

    1x1 conv (reduce), BN, ReLU, 3x3 conv (stride), BN, ReLU, 1x1 conv (restore 4x), BN, add, ReLU.
    """

    expansion = 4
    preactivation = False
    responses = ("bn2",)

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(_add_shortcut(out, self.shortcut, x))


class PreActBlock(nn.Module):
    """Pre-activation basic unit (He et al. 2016, Fig. 1b): BN, ReLU, 3x3 conv, BN, ReLU, 3x3 conv, add.

    Nothing follows the addition. See :func:`_preact_shortcut_input` for what the shortcut reads.
    """

    expansion = 1
    preactivation = True
    responses = ("conv1", "conv2")

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return _add_shortcut(out, self.shortcut, _preact_shortcut_input(self.shortcut, x, pre))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al. 2016, ResNet-164/1001).

    BN, ReLU, 1x1 conv (reduce), BN, ReLU, 3x3 conv (stride), BN, ReLU, 1x1 conv (restore 4x), add.
    """

    expansion = 4
    preactivation = True
    responses = ("conv2",)

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, channels * self.expansion)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return _add_shortcut(out, self.shortcut, _preact_shortcut_input(self.shortcut, x, pre))


# ModelSpec.block -> unit class
BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact": PreActBlock,
    "preact_bottleneck": PreActBottleneck,
}
