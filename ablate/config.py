"""Typed, frozen configuration of one training run (one trial).

A trial is fully described by a :class:`TrainConfig`: which network
(:class:`ModelSpec`), which data (:class:`DataConfig`), how to train it
(:class:`TrainerConfig`) and the seed. Every field has a default and a one-line
comment; the defaults are the paper's CIFAR-10 recipe (He et al. 2015, sec. 4.2).

This module knows nothing of torch, Ray or MLflow: it is the schema, its
validation, and the flat ``"a.b.c"`` view that study files, command-line
overrides and MLflow params all use.

Example::

    >>> cfg = TrainConfig(model=ModelSpec(n=9, shortcut="none"))
    >>> cfg.model.name, cfg.model.depth
    ('plain56', 56)
    >>> with_overrides(cfg, {"trainer.epochs": 2}).trainer.epochs
    2
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablate.data.catalog import dataset_names
from ablate.errors import UserError

__all__ = [
    "PAPER_ITERATIONS",
    "ConfigError",
    "DataConfig",
    "FUSABLE_KEYS",
    "ModelSpec",
    "PREACT_BLOCKS",
    "deep_merge",
    "TrainConfig",
    "TrainerConfig",
    "WarmupConfig",
    "check_fusable",
    "flatten",
    "fuse_key",
    "format_validation_error",
    "short_repr",
    "unflatten",
    "with_overrides",
]

Block = Literal["basic", "bottleneck", "preact", "preact_bottleneck"]
# Shortcut options: A/B/C (2015 sec. 3.3), none (plain net), and the shortcut variants of He et al. 2016
# (sec. 3.1, Fig. 2): scaled (b), gated (c), shortcut_gated (d), dropout (f); 2016's 1x1-conv shortcut (e) is C.
Shortcut = Literal["A", "B", "C", "none", "scaled", "gated", "shortcut_gated", "dropout"]
# Where BN and ReLU sit around the addition (He et al. 2016 sec. 4.1, Fig. 4 (a)-(e)).
Activation = Literal["original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact"]
Stem = Literal["cifar", "imagenet"]

PAPER_ITERATIONS = 64_000  # the paper's run length (sec. 4.2), used when neither iterations nor epochs is set

# Weighted layers per residual unit, by block type: depth = LAYERS_PER_UNIT * (units in all stages) + 2.
LAYERS_PER_UNIT = {"basic": 2, "preact": 2, "bottleneck": 3, "preact_bottleneck": 3}
PREACT_BLOCKS = ("preact", "preact_bottleneck")  # the full pre-activation units (2016), as block names
VARIANT_FIELDS = {  # field -> the shortcuts it applies to; elsewhere it must keep its default
    "shortcut_scale": ("scaled",),
    "residual_scale": ("scaled",),
    "gate_bias": ("gated", "shortcut_gated"),
    "shortcut_dropout": ("dropout",),
}


class ConfigError(UserError):
    """A configuration a user wrote is invalid; the message says where and what is allowed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)  # finite floats


class ModelSpec(_Frozen):
    """One point of the ResNet design space: the CIFAR nets (He et al. 2015 sec. 4.2), the ImageNet nets
    of Table 1 (sec. 3.4, 4.1), and the unit variants of He et al. 2016. The defaults are ResNet-20."""

    block: Block = "basic"  # basic: 3x3,3x3 | bottleneck: 1x1,3x3,1x1(4x) | preact*: BN-ReLU-conv order (2016)
    n: int | tuple[int, ...] = 3  # units per stage: one number for three stages (CIFAR: 6n+2 / 9n+2
    #   layers), or one per stage, e.g. [2, 2, 2, 2] (ResNet-18), [3, 4, 6, 3] (ResNet-34/50)
    shortcut: Shortcut = "A"  # A: zero-pad identity, B: projection where shape changes, C: all projections,
    #   none: plain net; 2016 variants (applied to every shortcut, projected as B where the shape changes):
    #   scaled: shortcut_scale * h(x) + residual_scale * F; gated: (1-g) h(x) + g F; shortcut_gated: (1-g) h(x) + F,
    #   with g = sigmoid(1x1 conv(x) + b); dropout: h(x) dropped with probability shortcut_dropout
    stem: Stem = "cifar"  # cifar: 3x3 conv, stride 1 | imagenet: 7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2
    activation: Activation = "original"  # BN/ReLU placement of basic and bottleneck units (2016 Fig. 4); the
    #   preact blocks are full_preact already (block basic + full_preact builds exactly block preact)
    base_width: int = Field(16, ge=1, le=1024)  # filters of the first stage (CIFAR: 16, ImageNet: 64; each stage doubles)
    width_mult: float = Field(1.0, gt=0, le=64)  # multiplies base_width (wide variants)
    shortcut_scale: float = Field(0.5, gt=0, allow_inf_nan=False)  # scaled: lambda on the shortcut (2016: 0.5)
    residual_scale: float = Field(1.0, gt=0, allow_inf_nan=False)  # scaled: factor on F (2016: 1 fails; 0.5 trains)
    gate_bias: float = Field(-6.0, allow_inf_nan=False)  # gated kinds: initial bias b of the gate (2016 Table 1: -6 best)
    shortcut_dropout: float = Field(0.5, ge=0, lt=1)  # dropout: probability of dropping a shortcut element (2016: 0.5)

    @field_validator("n")
    @classmethod
    def _units_per_stage(cls, n: int | tuple[int, ...]) -> int | tuple[int, ...]:
        units = n if isinstance(n, tuple) else (n,)
        if min(units, default=0) < 1 or max(units) > 1000 or len(units) > 16:
            raise ValueError("units per stage: one number in [1, 1000], or a list of 1 to 16 stages, each in [1, 1000]")
        return n

    @model_validator(mode="after")
    def _check_combination(self) -> "ModelSpec":
        if self.block in PREACT_BLOCKS and self.activation != "original":
            plain_block = "basic" if self.block == "preact" else "bottleneck"
            raise ValueError(
                f"activation {self.activation!r} with block {self.block!r}: the preact blocks are full pre-activation "
                f"already; to choose the placement use block {plain_block!r} with activation one of "
                "original, bn_after_add, relu_before_add, relu_preact, full_preact"
            )
        defaults = type(self).model_fields
        for key, shortcuts in VARIANT_FIELDS.items():
            if getattr(self, key) != defaults[key].default and self.shortcut not in shortcuts:
                raise ValueError(
                    f"{key} applies to shortcut {' or '.join(shortcuts)} only (got shortcut {self.shortcut!r}); "
                    "leave it out for other shortcuts"
                )
        return self

    @property
    def stage_units(self) -> tuple[int, ...]:
        """Units in each stage: ``n`` three times (CIFAR), or ``n`` itself when it is a list."""
        return self.n if isinstance(self.n, tuple) else (self.n,) * 3

    @property
    def depth(self) -> int:
        """Weighted layers: the stem conv, the convs of all units, and the classifier."""
        return LAYERS_PER_UNIT[self.block] * sum(self.stage_units) + 2

    @property
    def residual(self) -> bool:
        return self.shortcut != "none"

    @property
    def min_image_size(self) -> int:
        """Smallest input side: each stride-2 step (every stage after the first; the imagenet stem's
        conv and max-pool) halves the maps, and the last must still have 1 pixel."""
        return 2 ** (len(self.stage_units) - 1 + (2 if self.stem == "imagenet" else 0))

    @property
    def placement(self) -> str:
        """The unit's BN/ReLU placement (2016 Fig. 4): the preact blocks are ``full_preact``."""
        return "full_preact" if self.block in PREACT_BLOCKS else self.activation

    @property
    def width(self) -> int:
        """Filters of the first stage after the multiplier."""
        return max(1, round(self.base_width * self.width_mult))

    @property
    def name(self) -> str:
        """The paper's name where there is one: resnet20, plain56, resnet56-B, preact_resnet164, resnet50, ...

        Four stages are the ImageNet family of Table 1 (defaults: imagenet stem, width 64, shortcut B);
        other layouts the CIFAR family (cifar stem, width 16, shortcut A; B for bottleneck units).
        Anything else is a suffix: ``resnet18-cifar`` (small-image stem), ``resnet110-gated``,
        ``resnet110-bn_after_add``, ``resnet20-w32``.
        """
        preact = self.placement == "full_preact"
        name = f"{'preact_' if preact else ''}{'resnet' if self.residual else 'plain'}{self.depth}"
        imagenet = len(self.stage_units) == 4
        if self.stem != ("imagenet" if imagenet else "cifar"):
            name += f"-{self.stem}"
        default_shortcut = "B" if imagenet or self.block.endswith("bottleneck") else "A"
        if self.residual and self.shortcut != default_shortcut:
            name += f"-{self.shortcut}"
        if not preact and self.activation != "original":
            name += f"-{self.activation}"
        if self.width != (64 if imagenet else 16):
            name += f"-w{self.width}"
        return name


class DataConfig(_Frozen):
    """Which data set, where its files are, and how it is split and augmented."""

    name: str = "cifar10"  # a data set of ablate.data.catalog: cifar10 | cifar100 | fashion-mnist | synthetic
    root: str | None = Field(None, max_length=4096)  # folder holding the files; None: the standard places, then the cache
    download: bool = True  # fetch (with checksum) into the cache when the files are not found
    val_size: int = Field(5000, ge=0)  # held out from the training set (paper: 45k/5k); 0: no validation
    train_size: int | None = Field(None, ge=1)  # keep this many training images (after the split); None: all
    test_size: int | None = Field(None, ge=1)  # keep this many test images; None: all
    augment: bool = True  # 4-pixel pad + random crop + random horizontal flip (paper sec. 4.2)
    normalize: Literal["channel", "pixel"] = "channel"  # channel: per-channel mean/std; pixel: per-pixel mean subtracted (paper sec. 4.2)
    split_seed: int = 0  # seeds the train/validation split, independent of the trial seed
    # synthetic only: a class-conditional random data set of any shape and size
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)  # (channels, height, width)
    synthetic_classes: int = Field(10, ge=2)  # number of classes
    synthetic_train: int = Field(1000, ge=1)  # training images before the validation split
    synthetic_test: int = Field(200, ge=1)  # test images

    @field_validator("name")
    @classmethod
    def _known_data_set(cls, name: str) -> str:
        if name not in dataset_names():
            raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(map(repr, dataset_names()))}")
        return name


class WarmupConfig(_Frozen):
    """Learning-rate warm-up before the main schedule (paper sec. 4.2, used for n = 18)."""

    policy: Literal["none", "paper", "linear"] = "none"  # paper: low lr until train error < threshold; linear: ramp
    lr: float = Field(0.01, gt=0)  # paper policy: the warm-up learning rate
    until_train_error: float = Field(0.8, gt=0, le=1)  # paper policy: leave warm-up below this training error
    max_iterations: int = Field(2000, ge=1)  # paper policy: leave warm-up after this many iterations regardless
    check_every: int = Field(20, ge=1)  # paper policy: iterations per training-error check (mean over the window)
    ramp_iterations: int = Field(400, ge=1)  # linear policy: lr rises linearly from ~0 to the base lr over k iterations


class TrainerConfig(_Frozen):
    """The optimisation recipe and the speed switches of the shared trainer."""

    batch_size: int = Field(128, ge=1)  # mini-batch (paper: 128)
    lr: float = Field(0.1, gt=0)  # base learning rate (paper: 0.1)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum (paper: 0.9)
    weight_decay: float = Field(1e-4, ge=0)  # L2 on all weights (paper: 1e-4)
    nesterov: bool = False  # Nesterov momentum (paper: off)
    iterations: int | None = Field(None, ge=1)  # run length in iterations; None: PAPER_ITERATIONS unless epochs is set
    epochs: int | None = Field(None, ge=1)  # run length in epochs instead (iterations = epochs * batches per epoch)
    schedule: Literal["step", "cosine", "constant"] = "step"  # lr schedule after warm-up
    milestones: tuple[float, ...] = Field((0.5, 0.75), max_length=100)  # step: fractions of the run where lr *= gamma (paper: 32k, 48k of 64k)
    gamma: float = Field(0.1, gt=0, le=1)  # step: lr multiplier at each milestone (paper: /10)
    warmup: WarmupConfig = WarmupConfig()  # warm-up policy
    eval_every: int | None = Field(None, ge=1)  # iterations between evaluations; None: once per epoch
    eval_batch_size: int = Field(1000, ge=1)  # batch for validation/test passes (no gradients)
    grad_norm_every: int = Field(10, ge=1)  # iterations between per-stage gradient-norm samples
    device: str = Field("auto", max_length=32)  # auto (cuda if present, else cpu) | cpu | cuda | cuda:N
    bf16: bool | None = None  # bf16 autocast; None: on where it helps (CUDA, CPUs with AMX/AVX512-BF16)
    channels_last: bool | None = None  # NHWC memory format; None: on where it helps (same rule as bf16)
    compile: bool = False  # torch.compile the model (pays off only for long runs; see docs/BENCHMARKS.md)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA; CPU runs are already repeatable)

    @model_validator(mode="after")
    def _check_milestones(self) -> "TrainerConfig":
        ms = self.milestones
        if any(not 0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            raise ValueError(f"milestones must be increasing fractions of the run in (0, 1), got {list(ms)}")
        return self

    @model_validator(mode="after")
    def _one_run_length(self) -> "TrainerConfig":
        if self.iterations is not None and self.epochs is not None:
            raise ValueError(
                f"iterations ({self.iterations}) and epochs ({self.epochs}) are both set; the run length is one "
                "of them: set the other to null (e.g. --set trainer.iterations=null)"
            )
        return self

    def run_length(self, batches_per_epoch: int) -> int:
        """Iterations of the run: ``epochs`` x ``batches_per_epoch``, else ``iterations``, else the paper's 64k."""
        if self.epochs is not None:
            return self.epochs * batches_per_epoch
        return PAPER_ITERATIONS if self.iterations is None else self.iterations


class TrainConfig(_Frozen):
    """Everything one trial needs: network, data, recipe and seed."""

    model: ModelSpec = ModelSpec()  # the network
    data: DataConfig = DataConfig()  # the data set and its split
    trainer: TrainerConfig = TrainerConfig()  # the optimisation recipe
    seed: int = 0  # seeds initialisation, data order and augmentation


# -- flat view -----------------------------------------------------------------------------------


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """``{"model.n": 3, "trainer.warmup.policy": "none", ...}``: the view MLflow params and studies use."""
    items = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in items.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = list(value) if isinstance(value, tuple) else value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: '{part}' is a value, not a section")
        node[leaf] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in, section by section."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(err: ValidationError, *, source: str = "config", prefix: str = "") -> str:
    """One readable message: ``source: key.path: what is wrong (got X)`` per problem."""
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        msg = problem["msg"].removeprefix("Value error, ")  # our validators' own messages, as written
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if problem["type"] in ("missing", "extra_forbidden") else f" (got {short_repr(problem.get('input'))})"
        lines.append(f"{source}: {where}: {msg}{got}")
    return "\n".join(lines)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for messages (a value may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def with_overrides(cfg: TrainConfig, overrides: dict[str, Any], *, source: str = "overrides") -> TrainConfig:
    """A new config with dotted-key overrides applied and validated, e.g. ``{"model.n": 9}``."""
    data = deep_merge(cfg.model_dump(), unflatten(overrides))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source)) from None


# -- which configs may train fused (ablate.fused) --------------------------------------------------

# Flat config keys (and prefixes, ending in ".") in which the members of a fused group may differ:
# everything that leaves the shapes, the data, the run length and the speed switches alone.
FUSABLE_KEYS = (
    "seed", "trainer.lr", "trainer.momentum", "trainer.weight_decay", "trainer.schedule", "trainer.milestones",
    "trainer.gamma", "trainer.warmup.",
)


def _fusable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in FUSABLE_KEYS)


def fuse_key(config: TrainConfig) -> tuple:
    """What must be equal for two configs to train fused: the flat config without :data:`FUSABLE_KEYS`."""
    return tuple(sorted((k, repr(v)) for k, v in flatten(config).items() if not _fusable(k)))


def check_fusable(configs: list[TrainConfig] | tuple[TrainConfig, ...]) -> None:
    """ConfigError naming the first key in which two configs differ that fused training cannot mix."""
    if not configs:
        raise ConfigError("train_fused needs at least one config")
    first = flatten(configs[0])
    for index, config in enumerate(configs[1:], start=1):
        for key, value in flatten(config).items():
            if not _fusable(key) and value != first[key]:
                raise ConfigError(
                    f"cannot fuse config 0 with config {index}: they differ in {key} ({first[key]!r} vs {value!r}); "
                    f"fused runs may differ only in {', '.join(k.rstrip('.') for k in FUSABLE_KEYS)}"
                )
