"""Parameter and multiply-accumulate counts, without allocating weights or doing arithmetic.

A :class:`~ablate.config.ModelSpec` is built on the ``meta`` device (shapes only, no storage).
MACs come from one meta-tensor image traced through the network under :class:`_MacCounter`:
every ``conv2d`` and ``linear`` call adds (its output elements per image) x (its weights per
output element); BN, ReLU, additions, pooling, option A's zero-padding and biases are not
counted. BN, ReLU and same-shape additions are skipped during the trace (they return their
input): they cannot change any shape, and on the meta device each would run a Python
decomposition, which made tracing ResNet-1202 take seconds. The numbers equal
``torch.utils.flop_counter.FlopCounterMode``'s FLOPs / 2 on a real forward (the tests check it).

Counts of a spec are cached (specs are frozen; study planning asks once per seed), and the
last meta model is kept, since callers ask for a spec's parameters and then its MACs.

Example::

    >>> from ablate.config import ModelSpec
    >>> count_params(ModelSpec(n=3)), count_macs(ModelSpec(n=3))   # ResNet-20
    (269722, 40551040)
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ablate.config import ModelSpec
from ablate.models.resnet import ResNet, build_model

__all__ = ["count_macs", "count_params"]


def count_params(spec_or_model: ModelSpec | nn.Module, *, in_channels: int = 3, num_classes: int = 10) -> int:
    """Trainable parameters (conv and FC weights, FC bias, BN weight and bias; not BN's running stats).

    ``in_channels`` and ``num_classes`` apply to a spec; a module (a whole model or one of its
    ``parts()``) is counted as built.
    """
    if isinstance(spec_or_model, ModelSpec):
        return _spec_params(spec_or_model, in_channels, num_classes)
    if not isinstance(spec_or_model, nn.Module):
        raise TypeError(f"count_params: expected a ModelSpec or an nn.Module, got {type(spec_or_model).__name__}")
    return sum(p.numel() for p in spec_or_model.parameters())


def count_macs(
    spec_or_model: ModelSpec | ResNet, *, in_channels: int = 3, num_classes: int = 10, image_size: int = 32
) -> int:
    """Conv + linear multiply-accumulates of one forward pass of one ``image_size`` square image.

    ``in_channels`` and ``num_classes`` apply to a spec; a model is traced with its own input
    channels through meta copies of its parameters and buffers (its weights and BN statistics
    are neither read nor changed). An image smaller than the net's ``min_image_size`` is a ValueError.
    """
    if isinstance(spec_or_model, ModelSpec):
        return _spec_macs(spec_or_model, in_channels, num_classes, image_size)
    if not isinstance(spec_or_model, ResNet):
        raise TypeError(f"count_macs: expected a ModelSpec or a ResNet, got {type(spec_or_model).__name__}")
    return _trace_macs(spec_or_model, image_size)


class _MacCounter(TorchFunctionMode):
    """Adds up conv2d and linear MACs of the calls made under it; skips BN, ReLU and same-shape additions."""

    _COUNTED = {F.conv2d, F.linear}  # (input, weight, ...): MACs = output elements x weight[0] elements
    _KEEP_SHAPE = {F.batch_norm, F.relu, torch.relu, torch.Tensor.relu}
    _ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__}

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._KEEP_SHAPE:
            return args[0]
        if func in self._ADD and isinstance(args[1], torch.Tensor) and args[0].shape == args[1].shape:
            return args[0]
        out = func(*args, **(kwargs or {}))
        if func in self._COUNTED:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.macs += out[0].numel() * weight[0].numel()  # per image: the first of the batch
        return out


@lru_cache(maxsize=1)
def _meta_model(spec: ModelSpec, in_channels: int, num_classes: int) -> ResNet:
    """``spec`` built on the meta device: parameters with shapes and no storage."""
    with torch.device("meta"):
        return build_model(spec, in_channels=in_channels, num_classes=num_classes)


@lru_cache(maxsize=256)
def _spec_params(spec: ModelSpec, in_channels: int, num_classes: int) -> int:
    return count_params(_meta_model(spec, in_channels, num_classes))


@lru_cache(maxsize=256)
def _spec_macs(spec: ModelSpec, in_channels: int, num_classes: int, image_size: int) -> int:
    return _trace_macs(_meta_model(spec, in_channels, num_classes), image_size)


def _trace_macs(model: ResNet, image_size: int) -> int:
    """One meta image through ``model`` (with meta copies of its state) under a :class:`_MacCounter`."""
    meta_state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in chain(model.named_parameters(), model.named_buffers())
    }
    image = torch.empty(1, model.in_channels, image_size, image_size, device="meta")
    with torch.no_grad(), _MacCounter() as counter:
        torch.func.functional_call(model, meta_state, (image,))
    return counter.macs
