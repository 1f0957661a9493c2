"""The ResNets of He et al. 2015 and 2016, built from a :class:`~ablate.config.ModelSpec`.

Layout, for a first-stage width ``w = spec.width`` and ``spec.stage_units`` units per stage:

- stem, ``cifar`` (2015 sec. 4.2): 3x3 conv (w filters), BN, ReLU; ``imagenet`` (Table 1, conv1 and
  the pooling of conv2_x): 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2. Units that start with
  an activation take over part of the cifar stem's: ``relu_preact`` keeps conv, BN; ``full_preact``
  the conv alone;
- stages of units with inner widths w, 2w, 4w, ... (times the unit's ``expansion``: 4 for bottleneck
  units); the first unit of every stage but the first downsamples by a stride-2 conv. CIFAR: three
  stages of n units on maps of 32, 16, 8 pixels (32x32 inputs), w = 16. ImageNet: four stages
  ([2, 2, 2, 2] for ResNet-18, [3, 4, 6, 3] for -34 and -50, ...) on maps of 56, 28, 14, 7 (224x224), w = 64;
- head: global average pooling, fully connected layer. Nets whose units leave the sum
  unactivated put the missing activation first: BN, ReLU for ``full_preact`` (2016 sec. 4.1), ReLU for
  ``relu_preact``. No dropout.

Initialisation (2015 sec. 3.4, He et al. 2015b): every conv Kaiming-normal (fan_out, ReLU
gain), BN weight 1 and bias 0; the fully connected layer keeps PyTorch's default
(uniform +-1/sqrt(fan_in)), as torchvision's ResNets do; a gate's bias starts at ``spec.gate_bias``.

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
from ablate.models.blocks import (
    BLOCKS,
    DropoutShortcut,
    GatedShortcut,
    Projection,
    ScaledShortcut,
    ZeroPadShortcut,
    conv3x3,
)

__all__ = ["ResNet", "build_model", "check_image_size", "make_shortcut", "make_stage"]


def check_image_size(height: int, width: int, minimum: int) -> None:
    """ValueError unless both sides are at least ``minimum`` (:attr:`ModelSpec.min_image_size`)."""
    if min(height, width) < minimum:
        raise ValueError(
            f"image of {height}x{width} pixels is too small for this net: its stride-2 steps halve the maps "
            f"down to 1 pixel, so both sides must be at least {minimum} pixels"
        )


def make_shortcut(spec: ModelSpec, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one unit, or None for a plain unit.

    2015 sec. 3.3: ``"A"`` identity, subsample and zero-pad where the shape changes (no parameters);
    ``"B"`` projection (1x1 conv with the stride, BN) where the shape changes, identity elsewhere;
    ``"C"`` projection on every shortcut (also 2016's "1x1 conv shortcut"); ``"none"``: plain net.
    2016 sec. 3.1 (Fig. 2): ``"scaled"``, ``"gated"``, ``"shortcut_gated"``, ``"dropout"`` act on every
    unit's shortcut h(x): the identity, or a projection (as B) where the shape changes.

    "Where the shape changes" includes the stem -> stage 1 step of bottleneck nets
    (w -> 4w channels at stride 1): A zero-pads there, B and C project.
    """
    kind = spec.shortcut
    reshapes = stride != 1 or in_channels != out_channels
    if kind == "none":
        return None
    if kind == "C" or (kind != "A" and reshapes):
        base: nn.Module = Projection(in_channels, out_channels, stride)
    elif kind == "A" and reshapes:
        base = ZeroPadShortcut(in_channels, out_channels, stride)
    else:
        base = nn.Identity()
    if kind == "scaled":
        return ScaledShortcut(base, scale=spec.shortcut_scale, residual_scale=spec.residual_scale)
    if kind in ("gated", "shortcut_gated"):
        return GatedShortcut(base, in_channels, out_channels, stride, bias=spec.gate_bias, exclusive=kind == "gated")
    if kind == "dropout":
        return DropoutShortcut(base, spec.shortcut_dropout)
    return base


def make_stage(spec: ModelSpec, in_channels: int, channels: int, n: int, *, stride: int) -> nn.Sequential:
    """n units of inner width ``channels``; the first takes ``in_channels`` and the stride."""
    block = BLOCKS[spec.block]
    out_channels = channels * block.expansion
    units = []
    for i in range(n):
        unit_stride = stride if i == 0 else 1
        unit_shortcut = make_shortcut(spec, in_channels, out_channels, unit_stride)
        units.append(block(in_channels, channels, stride=unit_stride, shortcut=unit_shortcut, activation=spec.placement))
        in_channels = out_channels
    return nn.Sequential(*units)


def _stem(spec: ModelSpec, in_channels: int, width: int) -> nn.Sequential:
    """conv (3x3, or 7x7 stride 2), then the BN and ReLU the units do not apply themselves; max-pool for imagenet."""
    if spec.stem == "imagenet":
        conv = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        layers = [("conv", conv), ("bn", nn.BatchNorm2d(width)), ("relu", nn.ReLU()),
                  ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        return nn.Sequential(OrderedDict(layers))
    layers = [("conv", conv3x3(in_channels, width))]
    if spec.placement != "full_preact":
        layers.append(("bn", nn.BatchNorm2d(width)))
    if spec.placement not in ("full_preact", "relu_preact"):
        layers.append(("relu", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


class GlobalAvgPool(nn.Module):
    """Global average pooling as a mean over height and width, (N, C, H, W) -> (N, C, 1, 1).

    For a 1x1 output PyTorch's ``nn.AdaptiveAvgPool2d(1)`` computes the same mean (the same numbers, to the
    bit), then, on channels_last input, restrides it in place with ``as_strided_``, which vmap has no
    batching rule for: fused runs fell back to a per-member loop there. The mean alone batches.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class ResNet(nn.Module):
    """A ResNet (or its plain twin): ``stem -> stages[0..K-1] -> head``. See the module docstring."""

    def __init__(self, spec: ModelSpec, *, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be at least 1 (1 grayscale, 3 RGB), got {in_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        expansion = BLOCKS[spec.block].expansion
        self.spec = spec
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.placement = spec.placement
        width = spec.width

        self.stem = _stem(spec, in_channels, width)
        stages, channels = [], width
        for i, n in enumerate(spec.stage_units):
            stage_width = width * 2**i
            stages.append(make_stage(spec, channels, stage_width, n, stride=1 if i == 0 else 2))
            channels = stage_width * expansion
        self.stages = nn.ModuleList(stages)

        head: list[tuple[str, nn.Module]] = []
        if self.placement == "full_preact":
            head.append(("bn", nn.BatchNorm2d(channels)))
        if self.placement in ("full_preact", "relu_preact"):
            head.append(("relu", nn.ReLU()))
        head += [("pool", GlobalAvgPool()), ("flatten", nn.Flatten()), ("fc", nn.Linear(channels, num_classes))]
        self.head = nn.Sequential(OrderedDict(head))

        self._init_weights()

    def _init_weights(self) -> None:
        """He init for conv weights (fan_out, ReLU gain), BN 1/0; the FC layer and conv biases (gates) keep theirs.

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
        check_image_size(x.shape[-2], x.shape[-1], self.spec.min_image_size)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def parts(self) -> dict[str, nn.Module]:
        """``{"stem", "stage1", ..., "stageK", "head"}``: the parts per-part gradient norms are taken over."""
        return {"stem": self.stem, **{f"stage{i + 1}": s for i, s in enumerate(self.stages)}, "head": self.head}

    def response_modules(self) -> list[tuple[str, nn.Module]]:
        """Fig. 7 layer responses (2015 sec. 4.2) in network order, as ``(qualified name, module)``.

        One per 3x3 layer: the BN right after it where there is one (the stem's, and each unit's
        ``responses``), else the conv itself (pre-activation units). The imagenet stem's 7x7 conv
        and the 1x1 convs of bottleneck units are not 3x3 layers. Names are those of
        ``named_modules()``, so ``model.get_submodule(name)`` returns the module.
        """
        found = []
        if self.spec.stem == "cifar":
            stem_name = "stem.bn" if hasattr(self.stem, "bn") else "stem.conv"
            found.append((stem_name, self.get_submodule(stem_name)))
        for i, stage in enumerate(self.stages):
            for j, unit in enumerate(stage):
                found += [(f"stages.{i}.{j}.{attr}", getattr(unit, attr)) for attr in unit.responses]
        return found



def build_model(spec: ModelSpec, *, in_channels: int = 3, num_classes: int = 10) -> ResNet:
    """The network ``spec`` describes, He-initialised, on the current default device.

    Build under ``with torch.device("meta"):`` to get its shapes without allocating weights.
    Raises ValueError for ``in_channels < 1`` or ``num_classes < 2``.
    """
    return ResNet(spec, in_channels=in_channels, num_classes=num_classes)
