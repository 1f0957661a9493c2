"""The model registry (timm style): named points of the design space, with the input each was made for.

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
    >>> imagenet_spec(50).n, default_input(model_spec("resnet50"))
    ((3, 4, 6, 3), ModelInput(in_channels=3, image_size=224, num_classes=1000))
"""

from __future__ import annotations

import difflib
from fnmatch import fnmatchcase
from typing import Any, Callable, NamedTuple

from pydantic import ValidationError

from ablate.config import LAYERS_PER_UNIT, ConfigError, ModelSpec, format_validation_error
from ablate.models.resnet import ResNet, build_model

__all__ = [
    "IMAGENET_LAYOUTS",
    "TABLE1_GFLOPS",
    "TABLE1_NOTE",
    "ModelInput",
    "create_model",
    "default_input",
    "imagenet_spec",
    "list_models",
    "model_spec",
    "register_model",
    "registry_name",
    "spec_for_depth",
    "table1_gflops",
]

# He et al. 2015, Table 1: the ImageNet nets' units and units per stage (conv2_x .. conv5_x) ...
IMAGENET_LAYOUTS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# ... and their "FLOPs" row, x 10^9 at 224x224: multiply-adds, as the paper counts them (not 2 FLOPs per MAC).
TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# Why the MACs counted here differ from that row (the numbers are checked in tests/test_models.py).
TABLE1_NOTE = (
    "Table 1 of He et al. 2015 counts multiply-adds, so its FLOPs compare with MACs here (a profiler that "
    "counts 2 FLOPs per multiply-add reports twice as many). ResNet-18 and -34 agree within the table's one "
    "decimal (1.81 and 3.66 G; 3.64 G for the option-A ResNet-34 the paper trained). The bottleneck nets "
    "(50/101/152) put the stride in the 3x3 conv, as torchvision does; the paper's released models put it in "
    "the first 1x1 conv, which then runs on a quarter of the pixels in the three downsampling units: 231.2M "
    "MACs less, 3.86 / 7.57 / 11.28 G against the table's 3.8 / 7.6 / 11.3. Parameters are the same either way."
)


class ModelInput(NamedTuple):
    """The input a net was made for: what ``ablate models`` counts it at unless told otherwise."""

    in_channels: int
    image_size: int
    num_classes: int


def default_input(spec: ModelSpec) -> ModelInput:
    """ImageNet (3 x 224 x 224, 1000 classes) for the imagenet stem, else CIFAR-10 (3 x 32 x 32, 10 classes)."""
    return ModelInput(3, 224, 1000) if spec.stem == "imagenet" else ModelInput(3, 32, 10)

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


def create_model(name: str, *, in_channels: int = 3, num_classes: int = 10, **spec_overrides: Any) -> ResNet:
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


def table1_gflops(spec: ModelSpec) -> float | None:
    """Table 1's FLOPs (multiply-adds, x 10^9, at 224x224) for a Table 1 net, whatever its shortcut; else None."""
    layout = IMAGENET_LAYOUTS.get(spec.depth)
    if layout is None or spec.stem != "imagenet" or spec.width != 64 or (spec.block, spec.stage_units) != layout:
        return None
    return TABLE1_GFLOPS[spec.depth]


def imagenet_spec(depth: int, **fields: Any) -> ModelSpec:
    """The Table 1 net of ``depth`` layers: imagenet stem, width 64, option B unless ``fields`` say otherwise."""
    if depth not in IMAGENET_LAYOUTS:
        raise ValueError(f"no ImageNet net of depth {depth} in Table 1; depths: {', '.join(map(str, IMAGENET_LAYOUTS))}")
    block, units = IMAGENET_LAYOUTS[depth]
    base = {"block": block, "n": units, "stem": "imagenet", "base_width": 64, "shortcut": "B"}
    return _validated_spec({**base, **fields}, source=f"imagenet_spec({depth})")


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


# He et al. 2015, Table 1 (ImageNet, option B as torchvision's counts), Table 2 (plain twins), Table 3 (A, C).


@register_model
def resnet18() -> ModelSpec:
    return imagenet_spec(18)


@register_model
def resnet34() -> ModelSpec:
    return imagenet_spec(34)


@register_model
def resnet50() -> ModelSpec:
    return imagenet_spec(50)


@register_model
def resnet101() -> ModelSpec:
    return imagenet_spec(101)


@register_model
def resnet152() -> ModelSpec:
    return imagenet_spec(152)


@register_model
def plain18() -> ModelSpec:
    return imagenet_spec(18, shortcut="none")


@register_model
def plain34() -> ModelSpec:
    return imagenet_spec(34, shortcut="none")


@register_model
def resnet34_a() -> ModelSpec:
    return imagenet_spec(34, shortcut="A")


@register_model
def resnet34_c() -> ModelSpec:
    return imagenet_spec(34, shortcut="C")


# The textbook ResNet-18 for small images (CIFAR-10, Fashion-MNIST): ResNet-18 with a 3x3 stride-1 stem
# and no max-pool, so its four stages see 32, 16, 8, 4 pixels of a 32x32 image.


@register_model
def resnet18_cifar() -> ModelSpec:
    return imagenet_spec(18, stem="cifar")
