"""Residual units, and the shortcuts the stage builder puts into them.

Both unit classes share one constructor signature (torchvision style)::

    Unit(in_channels, channels, *, stride=1, shortcut=None, activation="original")

``channels`` is the unit's inner width; the unit outputs ``channels * Unit.expansion``
channels. The stride (1, or 2 in the first unit of every stage but the first) sits in the
unit's 3x3 conv. ``shortcut`` is built by the stage builder (:func:`ablate.models.resnet.make_shortcut`):
``None`` makes a plain unit (the same layers, the addition skipped); a module mapping the
unit's input to the unit's output shape (identity, option A's zero-padding, a projection,
a dropped shortcut), which the unit adds to its residual branch F; or a :class:`Join`, which
combines itself with F (scaling and gating, He et al. 2016 Fig. 2). Units never read configuration.

``activation`` places BN and ReLU around the addition (He et al. 2016 sec. 4.1, Fig. 4), here for
a basic unit (a bottleneck unit has three layers, 1x1, 3x3, 1x1, in the same pattern):

- ``original`` (a, 2015): conv, BN, ReLU, conv, BN, add, ReLU;
- ``bn_after_add`` (b): conv, BN, ReLU, conv, add, BN, ReLU;
- ``relu_before_add`` (c): conv, BN, ReLU, conv, BN, ReLU, add;
- ``relu_preact`` (d): ReLU, conv, BN, ReLU, conv, BN, add;
- ``full_preact`` (e, the 2016 unit): BN, ReLU, conv, BN, ReLU, conv, add.

Nothing follows the addition in (c), (d) and (e). In (d) and (e) a projection shortcut reads the
pre-activated input (ReLU(x), or ReLU(BN(x))), sharing the unit's first activation with F (the usual
arrangement for pre-activation units that change dimensions); parameter-free shortcuts read ``x``
itself, so the signal path from the stem to the head stays free of nonlinearities (2016 sec. 3).

Attributes the network reads:

- ``expansion`` (class): output channels per inner channel (1 basic, 4 bottleneck; 2015 sec. 4.1).
- ``responses`` (instance): names of the submodules whose outputs are Fig. 7 layer responses
  (2015 sec. 4.2: each 3x3 layer's output "after BN and before other nonlinearity (ReLU/addition)"):
  the BN after each 3x3 conv; the 3x3 conv itself where no BN follows it before the addition or a
  nonlinearity (``full_preact``, and the last conv of ``bn_after_add``). The 1x1 convs of
  bottleneck units are not 3x3 layers, so only their middle layer is a response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "DropoutShortcut",
    "GatedShortcut",
    "Join",
    "Projection",
    "ScaledShortcut",
    "ZeroPadShortcut",
    "conv1x1",
    "conv3x3",
]

ACTIVATIONS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")  # 2016 Fig. 4 (a)-(e)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (a BN follows or precedes every conv)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


# -- shortcuts -------------------------------------------------------------------------------------


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
    """Options B and C (2015 sec. 3.3, eq. 2): 1x1 conv with the unit's stride, then BN.

    Option C, a projection on every unit, is also the "1x1 conv shortcut" of He et al. 2016 (Fig. 2e).
    """

    projects = True  # reads the pre-activated input in pre-activation units

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class DropoutShortcut(nn.Module):
    """Dropout on the shortcut (2016 Fig. 2f): ``h(x)`` times a Bernoulli(1 - p) mask while training.

    As in the paper's reading ("statistically imposes a scale of lambda with an expectation of
    0.5 on the shortcut"), the kept elements are not rescaled: the shortcut carries ``(1 - p) h(x)``
    in expectation, and exactly that in evaluation. ``base`` is the identity or, where the shape
    changes, a projection.
    """

    def __init__(self, base: nn.Module, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.base = base
        self.p = p
        self.projects = isinstance(base, Projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self.training:
            return h * torch.empty_like(h).bernoulli_(1 - self.p)
        return h * (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Join(nn.Module):
    """A shortcut that combines itself with the residual branch: ``forward(residual, x)`` is the unit's sum.

    ``base`` maps ``x`` to the output shape (identity, or a projection where the shape changes).
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.projects = isinstance(base, Projection)


class ScaledShortcut(Join):
    """Constant scaling (2016 Fig. 2b): ``residual_scale * F + scale * h(x)``.

    The paper's cases: ``scale`` 0.5 with F unscaled fails to train ResNet-110; 0.5 with F scaled by
    1 - 0.5 (a frozen exclusive gate) trains, to 12.35 % (2016 Table 1).
    """

    def __init__(self, base: nn.Module, *, scale: float, residual_scale: float = 1.0):
        super().__init__(base)
        self.scale = scale
        self.residual_scale = residual_scale

    def forward(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.residual_scale * residual + self.scale * self.base(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, residual_scale={self.residual_scale}"


class GatedShortcut(Join):
    """Gating (2016 Fig. 2c, 2d): ``g = sigmoid(W_g x + b_g)``, a 1x1 conv with the unit's stride.

    ``exclusive`` (c, as in Highway networks): ``g * F + (1 - g) * h(x)``;
    shortcut-only (d): ``F + (1 - g) * h(x)``. The gate's bias starts at ``bias`` (its weight is
    He-initialised with the network's convs): a negative bias opens the shortcut at the start
    (``1 - g`` near 1). The paper's ResNet-110: exclusive fails for b_g in [0, -5], 8.70 % at -6;
    shortcut-only 12.86 % at 0, 6.91 % at -6 (2016 Table 1).
    """

    def __init__(
        self, base: nn.Module, in_channels: int, out_channels: int, stride: int = 1, *, bias: float, exclusive: bool
    ):
        super().__init__(base)
        self.gate = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=True)
        nn.init.constant_(self.gate.bias, bias)
        self.exclusive = exclusive

    def forward(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        shortcut = (1 - g) * self.base(x)
        return g * residual + shortcut if self.exclusive else residual + shortcut

    def extra_repr(self) -> str:
        return f"exclusive={self.exclusive}"


# -- units -----------------------------------------------------------------------------------------


class _Unit(nn.Module):
    """The residual branch F as ``conv1..convL`` with ``bn1..bnL``, in the order ``activation`` names.

    Subclasses give ``expansion`` and ``_layers(in_channels, channels, stride)``: the convs in order.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        stride: int = 1,
        shortcut: nn.Module | None = None,
        activation: str = "original",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.activation = activation
        convs = self._layers(in_channels, channels, stride)
        self.num_layers = len(convs)
        for i, conv in enumerate(convs, start=1):
            bn = nn.BatchNorm2d(conv.in_channels if activation == "full_preact" else conv.out_channels)
            if activation == "full_preact":  # registered in forward order: bn1, conv1, bn2, conv2, ...
                self.add_module(f"bn{i}", bn)
                self.add_module(f"conv{i}", conv)
            else:
                self.add_module(f"conv{i}", conv)
                self.add_module(f"bn{i}", bn)
        self.shortcut = shortcut
        self.responses = tuple(self._response(i) for i, conv in enumerate(convs, start=1) if conv.kernel_size == (3, 3))

    def _layers(self, in_channels: int, channels: int, stride: int) -> list[nn.Conv2d]:
        raise NotImplementedError

    def _response(self, i: int) -> str:
        """The module whose output is layer i's response: its BN where one follows the conv directly."""
        no_bn_after = self.activation == "full_preact" or (self.activation == "bn_after_add" and i == self.num_layers)
        return f"conv{i}" if no_bn_after else f"bn{i}"

    def _pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, self.num_layers + 1)]

    def _join(self, out: torch.Tensor, x: torch.Tensor, pre: torch.Tensor | None = None) -> torch.Tensor:
        """``out + shortcut(x)``, or the shortcut's own join; a plain unit (no shortcut) skips the addition.

        ``pre``: the pre-activated input of (d) and (e), which projection shortcuts read instead of ``x``.
        """
        shortcut = self.shortcut
        if shortcut is None:
            return out
        if pre is not None and getattr(shortcut, "projects", False):
            x = pre
        return shortcut(out, x) if isinstance(shortcut, Join) else out + shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = self._pairs()
        (conv1, bn1), *rest = pairs
        if self.activation == "full_preact":  # BN, ReLU, conv, ...; add
            pre = F.relu(bn1(x))
            out = conv1(pre)
            for conv, bn in rest:
                out = conv(F.relu(bn(out)))
            return self._join(out, x, pre)
        if self.activation == "relu_preact":  # ReLU, conv, BN, ...; add
            pre = F.relu(x)
            out = bn1(conv1(pre))
            for conv, bn in rest:
                out = bn(conv(F.relu(out)))
            return self._join(out, x, pre)
        out = x
        for conv, bn in pairs[:-1]:  # conv, BN, ReLU for all but the last layer
            out = F.relu(bn(conv(out)))
        conv, bn = pairs[-1]
        out = conv(out)
        if self.activation == "original":  # BN, add, ReLU (2015)
            return F.relu(self._join(bn(out), x))
        if self.activation == "bn_after_add":  # add, BN, ReLU
            return F.relu(bn(self._join(out, x)))
        return self._join(F.relu(bn(out)), x)  # relu_before_add: BN, ReLU, add


    @property
    def reshapes(self) -> bool:
        """Whether the unit's output differs in shape from its input (a stride, or new channels)."""
        first, last = self.conv1, getattr(self, f"conv{self.num_layers}")
        strided = any(getattr(self, f"conv{i}").stride != (1, 1) for i in range(1, self.num_layers + 1))
        return strided or first.in_channels != last.out_channels

    def without_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with its residual branch F deleted (Veit, Wilber and Belongie 2016, sec. 4: a lesion).

        F is taken as zero in the sum, so the shortcut path remains (the identity, option A's zero-padding,
        a projection, a scaled or gated shortcut) followed by what the unit applies after the addition:
        ReLU for ``original``; BN, ReLU for ``bn_after_add``; nothing for ``relu_before_add`` and the
        pre-activation units, whose projections still read the pre-activated input. A plain unit has
        no shortcut: deleting it leaves the identity, which only a unit that keeps the shape allows
        (ValueError otherwise).
        """
        shortcut = self.shortcut
        if shortcut is None:
            if self.reshapes:
                raise ValueError("a plain unit that changes the shape (a stride or new channels) cannot be deleted: "
                                 "without a shortcut nothing would remain to carry its input on")
            return x
        pre = None
        if self.activation == "full_preact":
            pre = F.relu(self.bn1(x))
        elif self.activation == "relu_preact":
            pre = F.relu(x)
        source = pre if pre is not None and getattr(shortcut, "projects", False) else x
        if isinstance(shortcut, Join):
            base = shortcut.base(source)
            out = shortcut(torch.zeros_like(base), source)
        else:
            out = shortcut(source)
        if self.activation == "original":
            return F.relu(out)
        if self.activation == "bn_after_add":
            return F.relu(getattr(self, f"bn{self.num_layers}")(out))
        return out


class BasicBlock(_Unit):
    """Basic unit (2015 sec. 4.2, Fig. 5 left): two 3x3 convs; the first carries the stride."""

    expansion = 1

    def _layers(self, in_channels: int, channels: int, stride: int) -> list[nn.Conv2d]:
        return [conv3x3(in_channels, channels, stride), conv3x3(channels, channels)]


class Bottleneck(_Unit):
    """Bottleneck unit (2015 sec. 4.1, Fig. 5 right): 1x1 (reduce), 3x3 (stride), 1x1 (restore 4x).

    The stride sits in the 3x3 conv, as in torchvision (the paper's released ImageNet models put
    it in the first 1x1 conv: same parameters, fewer MACs; see ``ablate models``).
    """

    expansion = 4

    def _layers(self, in_channels: int, channels: int, stride: int) -> list[nn.Conv2d]:
        return [conv1x1(in_channels, channels), conv3x3(channels, channels, stride),
                conv1x1(channels, channels * self.expansion)]


# ModelSpec.block -> unit class; the preact blocks are these units with activation "full_preact"
BLOCKS: dict[str, type[_Unit]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact": BasicBlock,
    "preact_bottleneck": Bottleneck,
}
