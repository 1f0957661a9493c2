"""``plan``: what a study would run and what it costs, without training anything.

The costs of one trial (parameters, MACs, training FLOPs) are :func:`ablate.study.costs.trial_costs`.
"""

from __future__ import annotations

from collections import Counter

from ablate.console import text_table
from ablate.study.costs import eval_images, train_iterations, trial_costs, training_images
from ablate.study.core import Study, format_value

__all__ = ["eval_images", "format_plan", "plan_rows", "train_iterations", "training_images"]


def plan_rows(study: Study) -> list[dict]:
    """One row per trial: label, group, seed, params, macs, iterations, train_flops, then the axis values.

    Axis values come under their dotted keys, followed by the keys the ``constraints.set`` rules set.
    A study that fuses (``fuse`` above 1) adds ``ray_trial``: the number of the Ray trial the trial trains
    in (:meth:`Study.packs`); trials with the same number train fused.
    For a sampled study (tpe, random, nsga2, gp) there are no trials yet: one row per axis instead, with
    ``axis``, ``domain``, ``method``, ``num_samples``, ``seeds`` and ``trials`` (all of the study's: with
    design spaces, num_samples from each, plus the noise reference's seeds).
    """
    if study.sampled:
        return [
            {"axis": axis.key, "domain": axis.describe(), "method": study.search.method,
             "num_samples": study.search.num_samples, "seeds": len(study.seeds), "trials": study.num_trials}
            for axis in study.axes
        ]
    keys = [axis.key for axis in study.axes]
    keys += [key for rule in study.constraints.set for key in rule.then if key not in keys]
    costs: dict[str, dict[str, int]] = {}  # group -> trial_costs
    packs = study.packs() if study.fuse > 1 else []
    packed = {id(trial): number for number, pack in enumerate(packs, start=1) for trial in pack}
    rows = []
    for trial in study.trials():
        config = trial.config
        if trial.group not in costs:
            costs[trial.group] = trial_costs(config)
        cost = costs[trial.group]
        values = config.model_dump()
        rows.append({
            "label": trial.label, "group": trial.group, "seed": trial.seed, "params": cost["params"],
            "macs": cost["macs"], "iterations": train_iterations(config), "train_flops": cost["train_flops"],
            **({"ray_trial": packed[id(trial)]} if packed else {}),
            **{key: _lookup(values, key) for key in keys},
        })
    return rows


def format_plan(rows: list[dict]) -> str:
    """An aligned table of :func:`plan_rows` with totals (trials, configurations, PFLOP)."""
    if rows and "axis" in rows[0]:
        first = rows[0]
        trials = first["num_samples"] * first["seeds"]
        table = text_table(["axis", "domain"], [[row["axis"], row["domain"]] for row in rows], right=set())
        more = f" ({first['trials']} with the design spaces and the noise reference)" if first["trials"] != trials else ""
        return (f"{table}\n{first['method']}: {first['num_samples']} samples x {first['seeds']} "
                f"seed{'s' * (first['seeds'] != 1)} = {trials} trials{more}")
    fixed = ["label", "group", "seed", "params", "macs", "iterations", "train_flops", "ray_trial"]
    axes = [key for key in (rows[0] if rows else {}) if key not in fixed]
    fused = bool(rows) and "ray_trial" in rows[0]
    headers = ["label", "seed", "params", "MACs/image", "iterations", "train PFLOP", *axes, "group"]
    body = [
        [row["label"], row["seed"], f"{row['params']:,}", f"{row['macs'] / 1e6:,.1f}M", f"{row['iterations']:,}",
         f"{row['train_flops'] / 1e15:.3g}", *(format_value(row[key]) for key in axes), row["group"]]
        for row in rows
    ]
    if fused:  # which trials train together, second column
        headers.insert(1, "Ray trial")
        for line, row in zip(body, rows):
            line.insert(1, row["ray_trial"])
    table = text_table(headers, body, right={1, 2, 3, 4, 5, 6} if fused else {1, 2, 3, 4, 5})
    configs = len({row["group"] for row in rows})
    seeds = len({row["seed"] for row in rows})
    total = sum(row["train_flops"] for row in rows) / 1e15
    packing = ""
    if fused:
        packs = Counter(row["ray_trial"] for row in rows)
        packing = (f"; fused into {len(packs)} Ray trial{'s' * (len(packs) != 1)} of "
                   f"{'-'.join(map(str, sorted({min(packs.values()), max(packs.values())})))} trials each")
    return (f"{table}\n{len(rows)} trials ({configs} configuration{'s' * (configs != 1)} x {seeds} "
            f"seed{'s' * (seeds != 1)}), {total:.3g} PFLOP of training{packing}")


def _lookup(values: dict, key: str):
    for part in key.split("."):
        values = values[part]
    return values

