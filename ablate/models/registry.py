"""The model registry (timm style): named points of the design space.

A registered function takes no arguments and returns a :class:`~ablate.config.ModelSpec`;
it is registered under its ``__name__``, which must be the spec's paper name
(:attr:`ModelSpec.name`) written as a Python identifier: lower case, ``-`` as ``_``. So
``resnet56`` is ``ModelSpec(n=9)`` and ``resnet56_b`` is the spec named ``resnet56-B``; the
option variants are the only names that differ from ``spec.name`` at all, and
:func:`model_spec` accepts either spelling.

Example::

    >>> model_spec("resnet56_b").name
    'resnet56-B'
    >>> list_models("plain*")
    ['plain20', 'plain32', 'plain44', 'plain56', 'plain110']
    >>> spec_for_depth(164, block="bottleneck", shortcut="B").n
    18
"""

from __future__ import annotations

import difflib
from fnmatch import fnmatchcase
from typing import Any, Callable

from pydantic import ValidationError

from ablate.config import LAYERS_PER_UNIT, ConfigError, ModelSpec, format_validation_error
from ablate.models.resnet import CifarResNet, build_model

__all__ = ["create_model", "list_models", "model_spec", "register_model", "registry_name", "spec_for_depth"]

_REGISTRY: dict[str, ModelSpec] = {}  # registered name -> spec, in registration order


def registry_name(spec: ModelSpec) -> str:
    """The name a spec is registered under: ``spec.name`` in lower case with ``-`` as ``_``."""
    return spec.name.lower().replace("-", "_")


def register_model(fn: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
    """Decorator: register ``fn()`` under ``fn.__name__``, which must equal ``registry_name(fn())``."""
    spec = fn()
    name = fn.__name__
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model: {name}() must return a ModelSpec, got {type(spec).__name__}")
    if name in _REGISTRY:
        raise ValueError(f"register_model: {name!r} is already registered")
    if name != registry_name(spec):
        raise ValueError(
            f"register_model: {name!r} describes {spec.name!r}; register it as {registry_name(spec)!r} "
            "(the spec's name in lower case with '-' as '_')"
        )
    _REGISTRY[name] = spec
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the fnmatch ``pattern`` (case-sensitive), in registration order."""
    return [name for name in _REGISTRY if fnmatchcase(name, pattern)]


def model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name`` (or under its paper spelling, e.g. ``"resnet56-B"``)."""
    key = name.lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else f"registered: {', '.join(_REGISTRY)}"
    raise ConfigError(f"unknown model {name!r}; {hint} (list_models() gives all {len(_REGISTRY)})")


def _validated_spec(fields: dict[str, Any], *, source: str) -> ModelSpec:
    """``ModelSpec(**fields)``, with pydantic's error turned into one ConfigError (a ValueError)."""
    try:
        return ModelSpec(**fields)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source)) from None


def create_model(name: str, *, in_channels: int = 3, num_classes: int = 10, **spec_overrides: Any) -> CifarResNet:
    """Build a registered model, optionally with spec fields overridden (e.g. ``width_mult=2``)."""
    spec = model_spec(name)
    if spec_overrides:
        spec = _validated_spec({**spec.model_dump(), **spec_overrides}, source=f"create_model({name!r})")
    return build_model(spec, in_channels=in_channels, num_classes=num_classes)


def spec_for_depth(depth: int, *, block: str = "basic", **fields: Any) -> ModelSpec:
    """The spec of a ``depth``-layer net: depth = 6n + 2 (basic, preact) or 9n + 2 (bottleneck units)."""
    if block not in LAYERS_PER_UNIT:
        raise ValueError(f"unknown block {block!r}; allowed: {', '.join(LAYERS_PER_UNIT)}")
    if "n" in fields:
        raise ValueError("spec_for_depth: give depth or n, not both (n follows from depth)")
    per_n = 3 * LAYERS_PER_UNIT[block]  # weighted layers added by one more unit per stage
    n, rest = divmod(depth - 2, per_n)
    if rest or n < 1:
        below = per_n * max(1, n) + 2
        raise ValueError(
            f"depth {depth} does not exist for block {block!r}: depths are {per_n}n+2 with n >= 1; "
            f"nearest valid depths: {below}, {below + per_n}"
        )
    return _validated_spec({"block": block, "n": n, **fields}, source=f"spec_for_depth({depth})")


# -- the registered models ---------------------------------------------------------------------
# He et al. 2015, Table 6 (CIFAR-10, option A) and Fig. 6 (plain twins).


@register_model
def resnet20() -> ModelSpec:
    return spec_for_depth(20)


@register_model
def resnet32() -> ModelSpec:
    return spec_for_depth(32)


@register_model
def resnet44() -> ModelSpec:
    return spec_for_depth(44)


@register_model
def resnet56() -> ModelSpec:
    return spec_for_depth(56)


@register_model
def resnet110() -> ModelSpec:
    return spec_for_depth(110)


@register_model
def resnet1202() -> ModelSpec:
    return spec_for_depth(1202)


@register_model
def plain20() -> ModelSpec:
    return spec_for_depth(20, shortcut="none")


@register_model
def plain32() -> ModelSpec:
    return spec_for_depth(32, shortcut="none")


@register_model
def plain44() -> ModelSpec:
    return spec_for_depth(44, shortcut="none")


@register_model
def plain56() -> ModelSpec:
    return spec_for_depth(56, shortcut="none")


@register_model
def plain110() -> ModelSpec:
    return spec_for_depth(110, shortcut="none")


# Shortcut options B and C (2015 sec. 3.3, Table 3) on CIFAR depths.


@register_model
def resnet20_b() -> ModelSpec:
    return spec_for_depth(20, shortcut="B")


@register_model
def resnet20_c() -> ModelSpec:
    return spec_for_depth(20, shortcut="C")


@register_model
def resnet56_b() -> ModelSpec:
    return spec_for_depth(56, shortcut="B")


@register_model
def resnet56_c() -> ModelSpec:
    return spec_for_depth(56, shortcut="C")


# Bottleneck nets, original and pre-activation (He et al. 2016, Tables 2 and 3).


@register_model
def resnet164() -> ModelSpec:
    return spec_for_depth(164, block="bottleneck", shortcut="B")


@register_model
def resnet1001() -> ModelSpec:
    return spec_for_depth(1001, block="bottleneck", shortcut="B")


@register_model
def preact_resnet110() -> ModelSpec:
    return spec_for_depth(110, block="preact")


@register_model
def preact_resnet164() -> ModelSpec:
    return spec_for_depth(164, block="preact_bottleneck", shortcut="B")


@register_model
def preact_resnet1001() -> ModelSpec:
    return spec_for_depth(1001, block="preact_bottleneck", shortcut="B")
