"""``load_study``: a study file (plus overrides) checked completely before anything runs.

Order: read the YAML -> apply the overrides -> read the includes -> check the schema (types, unknown
keys) -> check the axes against :class:`~ablate.config.TrainConfig` (keys exist, values pass its
validation, nothing set twice) -> check the constraints -> check the metric or objectives -> check what
the search method needs -> check the design spaces and the noise reference (sub-spaces of the axes) ->
expand a grid (every config validated; empty after constraints; within the budget), or probe a sampled
space for a point within the budget (:func:`_check_feasible`).
"""

from __future__ import annotations

import difflib
import math
import random
import typing
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from ablate.config import ConfigError, TrainConfig, flatten, unflatten, with_overrides
from ablate.data.catalog import data_source
from ablate.study.core import Axis, DesignSpace, Study
from ablate.study.costs import train_iterations
from ablate.study.files import apply_overrides, read_yaml, resolve_space
from ablate.study.schema import (
    SAMPLED_METHODS,
    Constraints,
    Metric,
    NoiseReference,
    Objective,
    Origin,
    Range,
    SetRule,
    StudyError,
    StudyFile,
    format_errors,
)

__all__ = ["load_study"]

SECTIONS = ("model", "data", "trainer")
MAX_GRID_TRIALS = 10_000  # a grid is expanded at load: its points x seeds (before constraints) are capped here
MAX_PROBES = 256  # points of a sampled space whose costs are counted at load, to find one within the budget


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Read, check and expand a study file; StudyError (a ValueError) names the file, key path and what is allowed.

    ``overrides`` are ``"key.path=value"`` strings, the value parsed as YAML: ``"trainer.epochs=2"``,
    ``"seeds=[0,1]"``, ``"space.model.n=[3,5]"``, ``"search.method=random"``.

    Example::

        >>> study = load_study("studies/quickstart.yaml", ["trainer.iterations=20"])
        >>> len(study.trials()), study.trials()[0].config.trainer.iterations
        (4, 20)
    """
    path = Path(path)
    file = str(path)
    doc, applied = apply_overrides(read_yaml(path, file), list(overrides), file)
    origin = Origin(file, applied)
    doc["space"], written = resolve_space(doc.get("space"), path, origin)
    try:
        spec = StudyFile.model_validate(doc)
    except ValidationError as err:
        raise format_errors(err, origin, root=StudyFile) from None
    _check_size(spec, written, origin)
    base = TrainConfig(model=spec.model, data=spec.data, trainer=spec.trainer)
    fixed = set(flatten({section: doc.get(section) or {} for section in SECTIONS}))
    axes = tuple(_axis(key, domain, base, fixed, written[key], origin) for key, domain in spec.space.items())
    _check_overlaps(axes, written, origin)
    constraints = _constraints(spec.constraints, base, axes, origin)
    metric, objectives = _objectives(spec, origin)
    _check_method(spec, axes, written, origin)
    _check_fuse(spec, origin)
    design_spaces = tuple(
        DesignSpace(name, _design_axes(axes, sub, base, f"design_spaces.{name}", origin))
        for name, sub in spec.design_spaces.items()
    )
    study = Study(
        name=spec.name, question=spec.question.strip(), path=path, base=base, axes=axes, seeds=tuple(spec.seeds),
        search=spec.search, constraints=constraints, resources=spec.resources, max_concurrent=spec.max_concurrent,
        metric=metric, early_stopping=spec.early_stopping, fuse=spec.fuse, objectives=objectives,
        design_spaces=design_spaces, noise_reference=_noise_point(spec.noise_reference, axes, base, origin),
        overrides=tuple(overrides), document=doc, origin=origin,
    )
    if not study.sampled:
        study = replace(study, _grid=study._expand())
    _check_noise_reference(study, origin)
    _check_feasible(study)
    _check_budget(study, origin)
    _check_image_sizes(study, origin)
    return study


# -- axes ------------------------------------------------------------------------------------------


def _axis(key: str, domain: Any, base: TrainConfig, fixed: set[str], written: tuple[str, str], origin: Origin) -> Axis:
    """One axis: key checked, values validated against the base config, range checked, nothing set twice."""
    file, where = written
    fail = _failer(origin, file)
    _check_key(key, where, fail, leaf_only=False)
    if isinstance(domain, list):
        if not domain:
            fail(where, "an axis needs at least one value")
        values = tuple(_normalise(base, key, value, f"{file}: {where}[{i}]") for i, value in enumerate(domain))
        seen, repeated = set(), []  # a set, not pairwise comparisons: an axis may hold thousands of values
        for value in values:
            if _frozen(value) in seen:
                repeated.append(repr(value))
            seen.add(_frozen(value))
        if repeated:
            fail(where, f"each value may appear once; repeated: {', '.join(repeated)}")
        axis = Axis(key, values=values)
    elif isinstance(domain, dict) and {"low", "high"} & set(domain):
        axis = _range_axis(key, domain, base, where, file, origin)
    else:
        section = key.split(".")[0]
        fail(where, f"an axis is a list of values or {{low, high, log}} (got {domain!r}); "
                    f"to fix a value, set it under `{section}:` instead")
    clash = sorted(_leaves(axis) & fixed)
    if clash:
        problem = (f"{', '.join(clash)} is also fixed under `{clash[0].split('.')[0]}:`; set it in one place "
                   f"(to fix an axis from the command line, give it one value: space.{key}=[...])")
        if origin.source(clash[0]) != origin.file:  # fixed by an override
            raise StudyError(f"{origin.source(clash[0])}: {where}: {problem}")
        fail(where, problem)
    return axis


def _range_axis(key: str, domain: dict, base: TrainConfig, where: str, file: str, origin: Origin) -> Axis:
    """A sampled axis: bounds ordered, positive for log, whole for int fields, both accepted by the config."""
    fail = _failer(origin, file)
    try:
        domain = Range.model_validate(domain)
    except ValidationError as err:
        raise format_errors(err, Origin(file), root=Range, prefix=f"{where}.") from None  # file names any override
    kind = _numeric_kind(key)
    if kind is None:
        fail(where, "a {low, high} range needs a numeric (int or float) key; give a list of values instead")
    if domain.low >= domain.high:
        fail(where, f"low must be below high (got low={domain.low}, high={domain.high})")
    if domain.log and domain.low <= 0:
        fail(where, f"a log range needs low > 0 (got {domain.low})")
    integer = kind is int
    if integer and not (domain.low.is_integer() and domain.high.is_integer()):
        fail(where, f"{key} is an integer: low and high must be whole numbers (got {domain.low}, {domain.high})")
    for bound in ("low", "high"):
        value = getattr(domain, bound)
        _normalise(base, key, int(value) if integer else value, f"{file}: {where}.{bound}")
    low, high = (int(domain.low), int(domain.high)) if integer else (domain.low, domain.high)
    return Axis(key, low=low, high=high, log=domain.log, integer=integer)


def _check_overlaps(axes: tuple[Axis, ...], written: dict[str, tuple[str, str]], origin: Origin) -> None:
    """No two axes set the same key, or one a key inside the other's section."""
    for i, axis in enumerate(axes):
        for other in axes[:i]:
            nested = axis.key.startswith(other.key + ".") or other.key.startswith(axis.key + ".")
            if nested or _leaves(axis) & _leaves(other):
                file, where = written[axis.key]
                other_file = written[other.key][0]
                shown = other.key if other_file == file else f"{other.key} ({other_file})"
                problem = f"overlaps the axis {shown}; an axis may not set a key inside another"
                raise _error(origin, file, where, problem)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a normalised axis value (lists and dicts inside), equal where the values are."""
    if isinstance(value, dict):
        return frozenset((key, _frozen(item)) for key, item in value.items())
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value)
    return value


def _leaves(axis: Axis) -> set[str]:
    """The leaf config keys an axis sets: its key, or the keys inside its dict values."""
    dicts = [v for v in axis.values or () if isinstance(v, dict)]
    return {f"{axis.key}.{k}" for v in dicts for k in flatten(v)} if dicts else {axis.key}


# -- constraints -----------------------------------------------------------------------------------


def _constraints(constraints: Constraints, base: TrainConfig, axes: tuple[Axis, ...], origin: Origin) -> Constraints:
    """Keys checked (leaf TrainConfig keys; ``then`` not on an axis), values validated and normalised."""
    fail = _failer(origin, origin.file)
    axis_leaves = set().union(*(_leaves(axis) for axis in axes)) if axes else set()

    def checked(entry: dict[str, Any], where: str, *, any_of: bool, context: TrainConfig = base) -> dict[str, Any]:
        out = {}
        for key, want in entry.items():
            _check_key(key, f"{where}.{key}", fail, leaf_only=True)
            source = f"{origin.source(where)}: {where}.{key}"
            if any_of and isinstance(want, list):
                out[key] = [_normalise(context, key, v, f"{source}[{i}]") for i, v in enumerate(want)]
            else:
                out[key] = _normalise(context, key, want, source)
        return out

    exclude = [checked(entry, f"constraints.exclude[{i}]", any_of=True) for i, entry in enumerate(constraints.exclude)]
    for i, entry in enumerate(constraints.exclude):
        if not entry:
            fail(f"constraints.exclude[{i}]", "an empty entry would exclude every trial; name the keys to match")
    rules = []
    for i, rule in enumerate(constraints.set):
        where = f"constraints.set[{i}]"
        when = checked(rule.when, f"{where}.when", any_of=True)
        then = checked(rule.then, f"{where}.then", any_of=False, context=_matching(base, when))
        on_axis = sorted(k for k in then if k in axis_leaves or any(k.startswith(a.key + ".") for a in axes))
        if on_axis:
            fail(f"{where}.then", f"{', '.join(on_axis)} is an axis of the space; a rule may only set other keys "
                                  "(drop the unwanted combinations with constraints.exclude instead)")
        rules.append(SetRule(when=when, then=then))
    return constraints.model_copy(update={"exclude": exclude, "set": rules})  # the budget as given


def _matching(base: TrainConfig, when: dict[str, Any]) -> TrainConfig:
    """``base`` with a rule's ``when`` values applied (the first of a list), so that ``then`` values are
    validated where they apply (``model.gate_bias`` is valid where ``model.shortcut`` is gated); ``base``
    itself when those values do not combine."""
    try:
        return with_overrides(base, {k: v[0] if isinstance(v, list) else v for k, v in when.items()})
    except ConfigError:
        return base


# -- objectives, design spaces ----------------------------------------------------------------------


def _objectives(spec: StudyFile, origin: Origin) -> tuple[Metric, tuple[Objective, ...]]:
    """The study's metric and objectives: ``metric`` alone, or ``objectives`` whose first is a reported metric."""
    if spec.objectives is None:
        return spec.metric or Metric(), ()
    if spec.metric is not None:
        raise origin.error("objectives", "give either `metric` (one) or `objectives` (several), not both; "
                                         "the first objective plays the metric's part")
    names = [objective.name for objective in spec.objectives]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise origin.error("objectives", f"each objective may appear once; repeated: {', '.join(repeated)}")
    first = spec.objectives[0]
    if first.cost and spec.early_stopping is not None:
        raise origin.error("early_stopping", f"stops trials by their first objective while they train, but "
                                             f"{first.name} is a cost known before training: put a measured "
                                             "objective (e.g. val_error) first in `objectives`")
    if first.cost:
        raise origin.error("objectives[0]", f"{first.name} is a cost known before training; the first objective "
                                            "is the one reported while training (progress, early stopping): "
                                            "put a reported metric (e.g. val_error) first")
    return Metric(name=first.name, mode=first.mode), tuple(spec.objectives)


def _design_axes(axes: tuple[Axis, ...], sub: dict[str, Any], base: TrainConfig, where: str,
                 origin: Origin) -> tuple[Axis, ...]:
    """The study's axes, each narrowed to the design space's values or range where ``sub`` names it."""
    fail = _failer(origin, origin.file)
    by_key = {axis.key: axis for axis in axes}
    for key in sub:
        if key not in by_key:
            fail(f"{where}.{key}", f"not an axis of `space`; a design space narrows the axes: "
                                   f"{', '.join(by_key) or '(none)'}")
    return tuple(_narrowed(by_key[axis.key], sub[axis.key], base, f"{where}.{axis.key}", origin)
                 if axis.key in sub else axis for axis in axes)


def _narrowed(axis: Axis, domain: Any, base: TrainConfig, where: str, origin: Origin) -> Axis:
    """``axis`` narrowed to ``domain``: values it holds (or that lie in its range), or a range inside its own."""
    fail = _failer(origin, origin.file)
    if isinstance(domain, list) and domain:
        values = tuple(_normalise(base, axis.key, value, f"{where}[{i}]") for i, value in enumerate(domain))
        outside = [value for value in values if not _in_domain(axis, value)]
        if outside:
            fail(where, f"{', '.join(map(repr, outside))} outside the axis's domain {axis.describe()}")
        return Axis(axis.key, values=values)
    if isinstance(domain, dict) and not axis.categorical:
        narrowed = _range_axis(axis.key, domain, base, where, origin.file, origin)
        if narrowed.low < axis.low or narrowed.high > axis.high:
            fail(where, f"[{narrowed.low}, {narrowed.high}] outside the axis's domain {axis.describe()}")
        return narrowed
    fail(where, f"a design space gives an axis a non-empty list of its values{'' if axis.categorical else ' or a {low, high} range'} "
                f"(the axis: {axis.describe()})")


def _in_domain(axis: Axis, value: Any) -> bool:
    if axis.categorical:
        return _frozen(value) in {_frozen(v) for v in axis.values}
    return isinstance(value, (int, float)) and axis.low <= value <= axis.high


def _noise_point(noise: NoiseReference | None, axes: tuple[Axis, ...], base: TrainConfig,
                 origin: Origin) -> NoiseReference | None:
    """The noise reference with its point normalised: a value inside the domain of every axis, no other key."""
    if noise is None:
        return None
    fail = _failer(origin, origin.file)
    by_key = {axis.key: axis for axis in axes}
    where = "noise_reference.point"
    unknown, missing = sorted(set(noise.point) - set(by_key)), [k for k in by_key if k not in noise.point]
    if unknown or missing:
        fail(where, f"a value for every axis of `space` and no other key; unknown: {', '.join(unknown) or 'none'}, "
                    f"missing: {', '.join(missing) or 'none'}")
    point = {}
    for key, axis in by_key.items():
        point[key] = _normalise(base, key, noise.point[key], f"{origin.file}: {where}.{key}")
        if not _in_domain(axis, point[key]):
            fail(f"{where}.{key}", f"{point[key]!r} outside the axis's domain {axis.describe()}")
    return NoiseReference(point=point, seeds=noise.seeds)


def _check_noise_reference(study: Study, origin: Origin) -> None:
    """A noise reference belongs to a sampled study, and its point is kept by the constraints and the budget."""
    noise = study.noise_reference
    if noise is None:
        return
    if not study.sampled:
        raise origin.error("noise_reference", "for sampled studies; a grid runs every point once per seed "
                                              "already: add seeds instead")
    reason = study.drop_reason(noise.point)
    if reason:
        raise origin.error("noise_reference.point", f"{reason}; pick a point the study would train")


def _check_feasible(study: Study) -> None:
    """A sampled study (and each design space) has a point within the budget, found without training.

    Probed: every combination of the non-numeric axes (up to :data:`MAX_PROBES`, else that many drawn with
    seed 0), each numeric axis at its lowest value (costs grow with depth, width and run length). A probe
    that cannot be built is the same error as in a grid; when every probe is excluded, the verdict is left
    to the sampler (which gives up after a bounded number of draws).
    """
    if not study.sampled or not study.constraints.budget:
        return
    for axes, where in [(study.axes, "the space")] if not study.design_spaces else [
            (space.axes, f"design space {space.name!r}") for space in study.design_spaces]:
        configs = []
        for point in _probes(axes):
            values = study._resolve(point)  # noqa: SLF001  the study's own steps 2-4, no budget yet
            if values is not None:
                configs.append(study._validate(point, values, study.seeds[0]))  # noqa: SLF001
        if configs and all(study.over_budget(config) for config in configs):
            raise study.budget_error(configs, where)


def _probes(axes: tuple[Axis, ...]) -> list[dict[str, Any]]:
    """The points :func:`_check_feasible` counts: non-numeric axes combined, numeric ones at their lowest."""
    numeric = {axis.key: axis.low if not axis.categorical else min(axis.values)
               for axis in axes if not axis.categorical or all(_is_number(v) for v in axis.values)}
    others = [axis for axis in axes if axis.key not in numeric]
    if math.prod(len(axis.values) for axis in others) <= MAX_PROBES:
        combos = list(product(*(axis.values for axis in others)))
    else:
        rng = random.Random(0)
        combos = [tuple(rng.choice(axis.values) for axis in others) for _ in range(MAX_PROBES)]
    return [{**numeric, **dict(zip([axis.key for axis in others], combo))} for combo in combos]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- method and budget -----------------------------------------------------------------------------


def _check_fuse(spec: StudyFile, origin: Origin) -> None:
    """Fusing packs a grid's trials before the study starts, into Ray trials that ASHA could only stop whole."""
    if spec.fuse == 1:
        return
    if spec.search.method != "grid":
        raise origin.error("fuse", f"fusing packs the trials of a grid before it starts; search.method "
                                   f"{spec.search.method} draws its points while it runs: set fuse: 1")
    if spec.early_stopping is not None:
        raise origin.error("fuse", "early_stopping stops single trials, but fused trials train and stop together: "
                                   "remove early_stopping or set fuse: 1")


def _check_method(spec: StudyFile, axes: tuple[Axis, ...], written: dict[str, tuple[str, str]], origin: Origin):
    """What the method needs: a grid lists values, a sampled search has num_samples and axes; val_error a split."""
    measured = [("metric.name", spec.metric.name)] if spec.metric else []
    measured += [(f"objectives[{i}].name", o.name) for i, o in enumerate(spec.objectives or ())]
    for where, name in measured:
        if name == "val_error" and spec.data.val_size == 0:
            raise origin.error(where, "val_error needs a validation split: set data.val_size above 0")
    method = spec.search.method
    if spec.design_spaces and method != "random":
        raise origin.error("design_spaces", f"design spaces are compared by sampling each uniformly: set "
                                            f"search.method random (got {method})")
    if spec.search.population_size is not None and method != "nsga2":
        raise origin.error("search.population_size", f"only for search.method nsga2 (got {method})")
    if method == "grid":
        if spec.search.num_samples is not None:
            raise origin.error("search.num_samples", "only for search.method tpe or random; a grid runs every point")
        for axis in axes:
            if not axis.categorical:
                file, where = written[axis.key]
                raise _error(origin, file, where, "a grid needs a list of values; {low, high} ranges are for "
                                                  f"search.method {' or '.join(SAMPLED_METHODS)}")
        return
    if spec.search.num_samples is None:
        raise origin.error("search.num_samples", f"required for search.method {method}: how many points to sample")
    if not axes:
        raise origin.error("space", f"search.method {method} needs at least one axis to sample")


def _check_image_sizes(study: Study, origin: Origin) -> None:
    """Every grid trial's images survive its net's stride-2 steps (``ModelSpec.min_image_size``)."""
    for trial in study._grid:
        model, size = trial.config.model, data_source(trial.config.data).image_size
        if size < model.min_image_size:
            raise origin.error(
                "model.stem", f"{trial.label} needs images of at least {model.min_image_size} pixels "
                              f"({model.stem} stem, {len(model.stage_units)} stages), but {trial.config.data.name} "
                              f"has {size}; use stem cifar (3x3, stride 1) or fewer stages"
            )


def _check_size(spec: StudyFile, written: dict[str, tuple[str, str]], origin: Origin) -> None:
    """Before any value is checked or any point built: no axis, and no grid, beyond :data:`MAX_GRID_TRIALS`.

    The grid is counted as the product of its axes' lengths times the seeds, so a space of millions of
    points is refused in microseconds instead of being expanded first.
    """
    for key, domain in spec.space.items():
        if isinstance(domain, list) and len(domain) > MAX_GRID_TRIALS:
            file, where = written[key]
            raise _error(origin, file, where, f"{len(domain):,} values; an axis has at most {MAX_GRID_TRIALS:,}")
    if spec.search.method != "grid":
        return
    points = math.prod(len(domain) for domain in spec.space.values() if isinstance(domain, list))
    trials = points * len(spec.seeds)
    if trials > MAX_GRID_TRIALS:
        raise origin.error(
            "space", f"the grid has {points:,} points x {len(spec.seeds)} seed(s) = {trials:,} trials before "
                     f"constraints; at most {MAX_GRID_TRIALS:,} are expanded: narrow the axes or the seeds, or "
                     "sample the space (search.method: tpe or random, with search.num_samples)"
        )


def _check_budget(study: Study, origin: Origin) -> None:
    """At most ``search.max_trials`` trials; an ASHA grace period shorter than the longest trial."""
    budget = study.search.max_trials
    if budget is not None and study.num_trials > budget:
        configs = study.search.num_samples if study.sampled else study.num_trials // len(study.seeds)
        what = "samples" if study.sampled else "configurations"
        raise origin.error(
            "search.max_trials", f"the study would start {study.num_trials} trials ({configs} {what} x "
                                 f"{len(study.seeds)} seed(s)), more than max_trials {budget}; raise it "
                                 "(e.g. --set search.max_trials=N), or narrow the space or the seeds"
        )
    if study.early_stopping is not None:
        grace = study.early_stopping.grace_period
        longest = max(train_iterations(c) for c in [study.base, *(t.config for t in study._grid)])
        if grace >= longest:
            raise origin.error(
                "early_stopping.grace_period",
                f"{grace} iterations is not shorter than the longest trial ({longest} iterations): "
                "nothing would stop early",
            )


# -- keys and values -------------------------------------------------------------------------------


@cache
def _config_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(leaf keys, section keys) of TrainConfig, seed excluded: ``model.n``, ...; ``trainer.warmup``, ..."""
    leaves = frozenset(flatten(TrainConfig())) - {"seed"}
    sections = frozenset(key.rsplit(".", depth)[0] for key in leaves for depth in range(1, key.count(".") + 1))
    return leaves, sections


def _check_key(key: str, where: str, fail: Callable[[str, str], NoReturn], *, leaf_only: bool) -> None:
    """``key`` names a TrainConfig field (or, unless ``leaf_only``, a section of fields); not the seed."""
    leaves, sections = _config_keys()
    if key in leaves or (key in sections and not leaf_only):
        return
    if key == "seed":
        fail(where, "the seed is not an axis; list the replicates under `seeds:`")
    if key in sections:
        inside = sorted(k for k in leaves if k.startswith(key + "."))
        fail(where, f"{key} is a section; match one of its keys: {', '.join(inside)}")
    close = difflib.get_close_matches(key, sorted(leaves | sections), n=1, cutoff=0.7)
    guess = f"did you mean {close[0]!r}? " if close else ""
    parent = max((s for s in sections if key.startswith(s + ".")), key=len, default=None)
    if parent:
        children = sorted({k.removeprefix(parent + ".").split(".")[0] for k in leaves if k.startswith(parent + ".")})
        allowed = f"{parent} has: {', '.join(children)}"
    else:
        allowed = "keys are model.*, data.* or trainer.*, as in ablate/config.py"
    fail(where, f"{key!r} is not a TrainConfig key; {guess}({allowed})")


def _numeric_kind(key: str) -> type | None:
    """``int`` or ``float`` when the config field at ``key`` holds a number (``int | None`` counts), else None."""
    model: type[BaseModel] = TrainConfig
    *sections, leaf = key.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    annotation = model.model_fields[leaf].annotation
    kinds = {annotation, *typing.get_args(annotation)} & {int, float}
    return float if float in kinds else int if int in kinds else None


def _normalise(base: TrainConfig, key: str, value: Any, source: str) -> Any:
    """``value`` as the config holds it after validation (``"1e-4"`` -> 0.0001, a dict with its set keys)."""
    try:
        flat = flatten(with_overrides(base, {key: value}, source=source))
    except ConfigError as err:
        raise StudyError(str(err).replace("Value error, ", "")) from None
    if isinstance(value, dict):
        return unflatten({k: flat[f"{key}.{k}"] for k in flatten(value)})
    return flat[key]


def _error(origin: Origin, file: str, where: str, problem: str) -> StudyError:
    """``file: where: problem``, naming the override too when the study file's key came from one."""
    return origin.error(where, problem) if file == origin.file else StudyError(f"{file}: {where}: {problem}")


def _failer(origin: Origin, file: str) -> Callable[[str, str], NoReturn]:
    """``fail(where, problem)``: raise :func:`_error` for ``file``."""

    def fail(where: str, problem: str) -> NoReturn:
        raise _error(origin, file, where, problem)

    return fail
