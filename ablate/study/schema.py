"""The schema of a study file: typed, frozen pydantic models with unknown keys forbidden.

Fields are checked here one by one (types, ranges, allowed values); what depends on several fields
or on :class:`~ablate.config.TrainConfig` (axes, constraints, the method's needs) is checked in
:mod:`ablate.study.core`. Every problem becomes one :class:`StudyError` whose message names the file,
the key path and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ablate.config import ConfigError, DataConfig, ModelSpec, TrainerConfig, format_validation_error, short_repr
from ablate.metrics import EVAL_METRICS
from ablate.study.costs import COST_OBJECTIVES
from ablate.tracking.layout import NOISE_SPACE  # the noise reference's trials are tagged with this name

__all__ = [
    "Constraints",
    "EarlyStopping",
    "Metric",
    "NoiseReference",
    "Objective",
    "Origin",
    "Range",
    "Resources",
    "Search",
    "SetRule",
    "StudyError",
    "StudyFile",
    "format_errors",
]

Method = Literal["grid", "tpe", "random", "nsga2", "gp"]
MAX_QUESTION_CHARS = 2000  # a question is a sentence or a paragraph; it is recorded as an MLflow tag
SAMPLED_METHODS = ("tpe", "random", "nsga2", "gp")
MEASURED_OBJECTIVES = EVAL_METRICS  # objectives a trial reports while it trains (images_per_s among them)
OBJECTIVE_NAMES = (*MEASURED_OBJECTIVES, *COST_OBJECTIVES)
MAX_DESIGN_SPACES = 16  # design spaces one study compares


class StudyError(ConfigError):
    """A study file (or an override of it) is invalid; the message names the file, the key path and what is allowed.

    A :class:`~ablate.config.ConfigError`, hence a ``ValueError``: the CLI prints ``str(err)`` and exits 2.
    """


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Search(_Strict):
    """How the space is explored."""

    method: Method = "grid"  # grid: every point | tpe: Optuna's TPE (multi-objective with `objectives`) |
    #   random: uniform sampling | nsga2: Optuna's NSGA-II | gp: Optuna's Gaussian-process sampler
    num_samples: int | None = Field(None, ge=1)  # sampled: points to sample (each is run once per seed);
    #   with design_spaces, points per design space
    seed: int = 0  # sampled: seeds the sampler (the trials' own seeds are `seeds`)
    population_size: int | None = Field(None, ge=2, le=1000)  # nsga2: points per generation; None: Optuna's 50
    max_trials: int | None = Field(None, ge=1)  # budget: the study refuses to load if it would start more trials


class Range(_Strict):
    """A continuous or integer domain of a sampled axis; integer when the config field is an int."""

    low: float  # inclusive
    high: float  # inclusive
    log: bool = False  # sample uniformly in log space (low must be > 0)


class SetRule(_Strict):
    """Per-value override: where the trial's config matches every key of ``when``, apply ``then``."""

    when: dict[str, Any] = Field(min_length=1)  # dotted key -> value, or a list of values (any of them)
    then: dict[str, Any] = Field(min_length=1)  # dotted key -> value


class Constraints(_Strict):
    """Which points of the space are dropped or adjusted; matched against each trial's whole config."""

    exclude: list[dict[str, Any]] = []  # drop a trial matching every key of an entry (a list value: any of)
    set: list[SetRule] = []  # per-value overrides, applied in order before excludes are matched
    # the budget, over the whole space: a point above any bound is dropped before it trains (ablate.study.costs)
    max_params: float | None = Field(None, gt=0)  # trainable parameters
    max_macs: float | None = Field(None, gt=0)  # multiply-accumulates of one image's forward pass
    max_train_flops: float | None = Field(None, gt=0)  # training FLOPs of the whole run

    @property
    def budget(self) -> dict[str, float]:
        """Cost name (:data:`~ablate.study.costs.COST_OBJECTIVES`) -> its bound, for the bounds that are set."""
        bounds = {"params": self.max_params, "macs": self.max_macs, "train_flops": self.max_train_flops}
        return {name: bound for name, bound in bounds.items() if bound is not None}


class Resources(_Strict):
    """What one trial holds while it runs (Ray Tune's per-trial resources)."""

    cpu: float = Field(1, gt=0)  # CPU cores per trial
    gpu: float = Field(0, ge=0)  # 0: none; a fraction in (0, 1] shares one GPU; above 1: whole GPUs

    @field_validator("gpu")
    @classmethod
    def _whole_gpus_above_one(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("allowed: 0, a fraction in (0, 1], or a whole number of GPUs above 1")
        return gpu


def _one_of(name: str, allowed: tuple[str, ...], what: str) -> str:
    """``name`` if it is allowed, else the ValueError ``not <what>; allowed: ...``."""
    if name not in allowed:
        raise ValueError(f"not {what}; allowed: {', '.join(allowed)}")
    return name


class Metric(_Strict):
    """The number the study is about, as reported by the trainer (``ablate.metrics.EVAL_METRICS``)."""

    name: str = "test_error"  # e.g. test_error, val_error (tune on this), train_error, train_loss
    mode: Literal["min", "max"] = "min"  # whether lower or higher is better

    _reported_metric = field_validator("name")(lambda cls, name: _one_of(name, EVAL_METRICS, "a reported metric"))


class Objective(_Strict):
    """One objective of a multi-objective study: a reported metric, or a cost known before training."""

    name: str  # an ablate.metrics.EVAL_METRICS name (measured) or params | macs | train_flops (costs)
    mode: Literal["min", "max"]  # whether lower or higher is better

    _known_objective = field_validator("name")(lambda cls, name: _one_of(name, OBJECTIVE_NAMES, "an objective"))

    @property
    def cost(self) -> bool:
        """Known from the config before the trial starts (parameters, MACs, training FLOPs)."""
        return self.name in COST_OBJECTIVES


class NoiseReference(_Strict):
    """One configuration run once per seed: the spread of the metric that seeds alone make (its EDF)."""

    point: dict[str, Any] = Field(min_length=1)  # dotted axis key -> value, for every axis of `space`
    seeds: list[int] = Field(min_length=2, max_length=1000)  # replicates of the point

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        return _distinct_seeds(seeds)


class EarlyStopping(_Strict):
    """ASHA early stopping (Li et al. 2018): weak trials stop at rungs grace_period * rf^k iterations."""

    grace_period: int = Field(ge=1)  # training iterations every trial runs before it may be stopped
    reduction_factor: float = Field(4, gt=1)  # keep the best 1/rf of the trials at each rung


class StudyFile(_Strict):
    """A study file as written, after includes and overrides; ``space`` is checked by :mod:`ablate.study.core`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # MLflow experiment: letters, digits, _.-
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)  # the question the study answers
    data: DataConfig = DataConfig()  # fixed DataConfig fields
    model: ModelSpec = ModelSpec()  # fixed ModelSpec fields
    trainer: TrainerConfig = TrainerConfig()  # fixed TrainerConfig fields
    seeds: list[int] = Field([0], min_length=1)  # replicates: every configuration runs once per seed
    search: Search = Search()
    space: dict[str, Any] = {}  # dotted TrainConfig key -> list of values | {low, high, log}; `include: [...]`
    constraints: Constraints = Constraints()
    resources: Resources = Resources()
    max_concurrent: int | None = Field(None, ge=1)  # trials running at once; None: as many as resources allow
    metric: Metric | None = None  # the one metric; None: test_error (min), or the first of `objectives`
    objectives: list[Objective] | None = Field(None, min_length=2, max_length=8)  # several, instead of
    #   `metric`: the first a reported metric (progress line, early stopping), the others any objective
    design_spaces: dict[str, dict[str, Any]] = Field({}, max_length=MAX_DESIGN_SPACES)  # name -> sub-space of
    #   `space` (axis key -> values or {low, high, log}); search.method random draws num_samples from each
    noise_reference: NoiseReference | None = None  # one point x several seeds: the seed-noise EDF
    early_stopping: EarlyStopping | None = None  # None: every trial runs to the end
    fuse: int = Field(1, ge=1)  # trials differing only in seed/optimiser recipe trained as one Ray trial; 1: off

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        return _distinct_seeds(seeds)

    @field_validator("design_spaces")
    @classmethod
    def _space_names(cls, spaces: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in spaces:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or name == NOISE_SPACE:
                raise ValueError(f"design space {name!r}: a name is letters, digits and _.- (at most 64), "
                                 f"not {NOISE_SPACE!r} (the noise reference's)")
        return spaces


def _distinct_seeds(seeds: list[int]) -> list[int]:
    repeated = sorted(seed for seed, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise ValueError(f"each seed may appear once; repeated: {repeated}")
    return seeds


# -- messages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a study came from, to name it in messages: the file, and the overrides applied to it."""

    file: str  # the study file as the user named it
    overrides: tuple[tuple[str, str], ...] = ()  # (key path, the override as written)

    def source(self, where: str) -> str:
        """The file, plus the override that set ``where`` (or a key above or below it), if one did."""
        for path, text in self.overrides:
            if path == where or where.startswith(path + ".") or path.startswith(where + "."):
                return f"{self.file} (override {short_repr(text)})"
        return self.file

    def error(self, where: str, problem: str) -> StudyError:
        return StudyError(f"{self.source(where)}: {where}: {problem}")


def format_errors(err: ValidationError, origin: Origin, *, root: type[BaseModel], prefix: str = "") -> StudyError:
    """One :class:`StudyError` from pydantic's errors: a line per problem, with allowed keys for unknown ones.

    ``root`` is the model validated at ``prefix`` (its fields are the keys allowed there).
    """
    problems = err.errors()
    wheres = [prefix + ".".join(str(p) for p in problem["loc"]) for problem in problems]
    source = next((origin.source(w) for w in wheres if origin.source(w) != origin.file), origin.file)
    lines = format_validation_error(err, source=source, prefix=prefix).splitlines()
    out = []
    for line, problem in zip(lines, problems):  # format_validation_error writes one line per problem
        line = line.replace("Value error, ", "")
        if problem["type"] == "extra_forbidden":
            line += _unknown_key_hint(root, problem["loc"])
        out.append(line)
    return StudyError("\n".join(out))


def _unknown_key_hint(root: type[BaseModel], loc: tuple) -> str:
    """``; did you mean 'epochs'? (allowed: ...)`` for an unknown key at ``loc`` under ``root``."""
    model = _model_at(root, loc[:-1])
    if model is None:
        return ""
    allowed = list(model.model_fields)
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1)
    deeper = [f"{name}.{key}" for name in allowed if key in getattr(_model_at(model, (name,)), "model_fields", {})]
    guess = f"; did you mean {close[0]!r}?" if close else f"; did you mean {deeper[0]!r}?" if deeper else ""
    return f"{guess} (allowed: {', '.join(allowed)})"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class at ``loc`` below ``model`` (list indices skipped), or None."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *_flat_args(field.annotation)]
        found = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def _flat_args(annotation: Any) -> list[Any]:
    """Every type named inside ``annotation`` (``list[SetRule] | None`` -> list, SetRule, None)."""
    out = []
    for arg in typing.get_args(annotation):
        out += [arg, *_flat_args(arg)]
    return out
