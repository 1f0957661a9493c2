"""The CIFAR ResNet of He et al. 2015 (sec. 4.2), built from a :class:`~ablate.config.ModelSpec`.

Layout, for a stage width ``w = spec.width`` (16 in the paper) and ``n = spec.n`` units per stage:

- stem: 3x3 conv (w filters), BN, ReLU; for pre-activation units (He et al. 2016) the conv alone;
- three stages of n units on maps of 32, 16, 8 pixels (for 32x32 inputs) with inner widths
  w, 2w, 4w (times the unit's ``expansion``: 4 for bottleneck units); the first unit of
  stages 2 and 3 downsamples by a stride-2 3x3 conv;
- head: global average pooling, fully connected layer; pre-activation nets put a final
  BN, ReLU before the pooling (2016 sec. 4.1). No dropout.

Initialisation (2015 sec. 3.4, He et al. 2015b): every conv Kaiming-normal (fan_out, ReLU
gain), BN weight 1 and bias 0; the fully connected layer keeps PyTorch's default
(uniform +-1/sqrt(fan_in)), as torchvision's ResNets do.

Example::

    >>> from ablate.config import ModelSpec
    >>> model = build_model(ModelSpec(n=3), num_classes=10)   # ResNet-20
    >>> list(model.parts())
    ['stem', 'stage1', 'stage2', 'stage3', 'head']
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ablate.config import ModelSpec
from ablate.models.blocks import BLOCKS, Projection, ZeroPadShortcut, conv3x3

__all__ = ["MIN_IMAGE_SIZE", "CifarResNet", "build_model", "check_image_size", "make_shortcut", "make_stage"]

# Smallest input side: the two stride-2 downsamplings take 4 -> 2 -> 1 pixels.
MIN_IMAGE_SIZE = 4


def check_image_size(height: int, width: int) -> None:
    """ValueError unless both sides survive the two stride-2 downsamplings (at least ``MIN_IMAGE_SIZE``)."""
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image of {height}x{width} pixels is too small: stages 2 and 3 downsample by 2 each, "
            f"so both sides must be at least {MIN_IMAGE_SIZE} pixels"
        )


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one unit (2015 sec. 3.3), or None for a plain unit.

    - ``"A"``: identity; where the shape changes, subsample and zero-pad (no parameters);
    - ``"B"``: projection (1x1 conv with the stride, BN) where the shape changes, identity elsewhere;
    - ``"C"``: projection on every shortcut;
    - ``"none"``: no shortcut (plain net).

    "Where the shape changes" includes the stem -> stage 1 step of bottleneck nets
    (w -> 4w channels at stride 1): A zero-pads there, B and C project.
    """
    reshapes = stride != 1 or in_channels != out_channels
    if kind == "none":
        return None
    if kind == "C" or (kind == "B" and reshapes):
        return Projection(in_channels, out_channels, stride)
    if kind == "A" and reshapes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if kind in ("A", "B"):
        return nn.Identity()
    raise ValueError(f"unknown shortcut {kind!r}; allowed: 'A', 'B', 'C', 'none'")


def make_stage(
    block: type[nn.Module], in_channels: int, channels: int, n: int, *, stride: int, shortcut: str
) -> nn.Sequential:
    """n units of inner width ``channels``; the first takes ``in_channels`` and the stride."""
    out_channels = channels * block.expansion
    units = []
    for i in range(n):
        unit_stride = stride if i == 0 else 1
        unit_shortcut = make_shortcut(shortcut, in_channels, out_channels, unit_stride)
        units.append(block(in_channels, channels, stride=unit_stride, shortcut=unit_shortcut))
        in_channels = out_channels
    return nn.Sequential(*units)


class CifarResNet(nn.Module):
    """A CIFAR ResNet (or its plain twin): ``stem -> stages[0..2] -> head``. See the module docstring."""

    def __init__(self, spec: ModelSpec, *, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1 (1 grayscale, 3 RGB), got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        block = BLOCKS[spec.block]
        self.spec = spec
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.preactivation = block.preactivation
        width = spec.width

        stem: list[tuple[str, nn.Module]] = [("conv", conv3x3(in_channels, width))]
        if not block.preactivation:
            stem += [("bn", nn.BatchNorm2d(width)), ("relu", nn.ReLU())]
        self.stem = nn.Sequential(OrderedDict(stem))

        stages, channels = [], width
        for i, stage_width in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            stages.append(make_stage(block, channels, stage_width, spec.n, stride=stride, shortcut=spec.shortcut))
            channels = stage_width * block.expansion
        self.stages = nn.ModuleList(stages)

        head: list[tuple[str, nn.Module]] = []
        if block.preactivation:
            head += [("bn", nn.BatchNorm2d(channels)), ("relu", nn.ReLU())]
        head += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, num_classes))]
        self.head = nn.Sequential(OrderedDict(head))

        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs (fan_out, ReLU gain), BN 1/0; the FC layer keeps PyTorch's default.

        Skipped on the meta device, where tensors hold no values (and ``normal_`` runs a slow
        Python decomposition: half the time of building ResNet-1202 there).
        """
        if self.stem.conv.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_size(x.shape[-2], x.shape[-1])
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def parts(self) -> dict[str, nn.Module]:
        """``{"stem", "stage1", "stage2", "stage3", "head"}``: the parts per-part gradient norms are taken over."""
        return {"stem": self.stem, **{f"stage{i + 1}": s for i, s in enumerate(self.stages)}, "head": self.head}

    def response_modules(self) -> list[tuple[str, nn.Module]]:
        """Fig. 7 layer responses (2015 sec. 4.2) in network order, as ``(qualified name, module)``.

        Post-activation nets: the stem's BN and the BN after every 3x3 conv (6n + 1 for basic
        units, 3n + 1 for bottleneck units, whose 1x1 convs are not counted). Pre-activation
        nets: the stem conv and every 3x3 conv. Names are those of ``named_modules()``, so
        ``model.get_submodule(name)`` returns the module.
        """
        stem_name = "stem.conv" if self.preactivation else "stem.bn"
        found = [(stem_name, self.get_submodule(stem_name))]
        for i, stage in enumerate(self.stages):
            for j, unit in enumerate(stage):
                found += [(f"stages.{i}.{j}.{attr}", getattr(unit, attr)) for attr in unit.responses]
        return found


def build_model(spec: ModelSpec, *, in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """The network ``spec`` describes, He-initialised, on the current default device.

    Build under ``with torch.device("meta"):`` to get its shapes without allocating weights.
    Raises ValueError for ``in_channels < 1`` or ``num_classes < 2``.
    """
    return CifarResNet(spec, in_channels=in_channels, num_classes=num_classes)
