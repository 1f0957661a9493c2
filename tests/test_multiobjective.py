"""Several objectives, a budget, design spaces and a noise reference: the study schema, the searcher
(samplers, budget rejection, conditional axes, NSGA-II pickling) and one tiny study through Ray Tune.

Tiny runs as in tests/test_run.py: 8-layer width-4/8 nets on 16x16 synthetic images.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from ablate.cli import main
from ablate.config import TrainConfig
from ablate.search import run_study
from ablate.search.sampling import PicklableNSGAII, StudySearcher, objective_keys
from ablate.search.trainable import OBJECTIVE
from ablate.study import StudyError, load_study
from ablate.study.costs import trial_costs
from ablate.tracking import layout

TINY = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320, "synthetic_test": 64,
             "val_size": 64},
    "trainer": {"iterations": 20, "batch_size": 32, "eval_every": 10, "device": "cpu"},
}
SPACE = {"model.n": [1, 2, 3], "model.shortcut": ["none", "A", "B"], "model.base_width": [4, 8]}
TWO = [{"name": "val_error", "mode": "min"}, {"name": "train_flops", "mode": "min"}]


def study_file(tmp_path: Path, name: str = "mo", **fields) -> Path:
    """A study file of tiny runs; ``fields`` replace or add top-level keys."""
    doc = {"name": name, "question": f"What does {name} show?", **TINY, "space": SPACE,
           "search": {"method": "random", "num_samples": 4, "seed": 0}, "objectives": TWO, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if v is not None}))
    return path


def draw(study, n: int | None = None) -> list[dict]:
    """The first ``n`` trial params the study's searcher suggests (all of them when None), each told a result."""
    searcher = StudySearcher(study, metric=OBJECTIVE, mode=study.metric.mode)
    out = []
    while n is None or len(out) < n:
        suggestion = searcher.suggest(f"t{len(out)}")
        if suggestion == "FINISHED":
            break
        spec = suggestion["trial"]
        out.append(spec)
        result = {OBJECTIVE: 0.1 * (len(out) % 7), **spec.get("costs", {})}
        searcher.on_trial_complete(f"t{len(out) - 1}", result)
    return out


# -- the schema: each bad input is one message, exit 2 before Ray starts -----------------------------------

BAD = {
    "an unknown objective": ({"objectives": [TWO[0], {"name": "accuracy", "mode": "max"}]},
                             r"objectives\.1\.name: not an objective; allowed: epoch, .*train_flops"),
    "a mode other than min/max": ({"objectives": [TWO[0], {"name": "macs", "mode": "lowest"}]},
                                  r"objectives\.1\.mode: Input should be 'min' or 'max'"),
    "both metric and objectives": ({"metric": {"name": "val_error", "mode": "min"}},
                                   r"objectives: give either `metric` \(one\) or `objectives` \(several\)"),
    "a budget no point meets": ({"constraints": {"max_macs": 10}},
                                r"constraints: no point of the space meets the budget \(max_macs 10\)"),
    "a grid no point of which meets the budget": (
        {"search": None, "constraints": {"max_params": 10}}, r"no point of the grid meets the budget"),
    "early stopping on a cost objective": (
        {"objectives": [TWO[1], TWO[0]], "early_stopping": {"grace_period": 10}},
        r"early_stopping: .* train_flops is a cost known before training"),
    "a cost objective first": ({"objectives": [TWO[1], TWO[0]]}, r"objectives\[0\]: train_flops is a cost"),
    "a design space naming a key that is not an axis": (
        {"design_spaces": {"plain": {"model.block": ["basic"]}}},
        r"design_spaces\.plain\.model\.block: not an axis of `space`"),
    "a design space value outside its axis": (
        {"design_spaces": {"wide": {"model.base_width": [16]}}}, r"16 outside the axis's domain \{4, 8\}"),
    "design spaces with a model-based sampler": (
        {"search": {"method": "tpe", "num_samples": 2}, "design_spaces": {"plain": {"model.shortcut": ["none"]}}},
        r"design_spaces: .* set search\.method random"),
    "a noise reference missing an axis": (
        {"noise_reference": {"point": {"model.n": 1}, "seeds": [0, 1]}}, r"missing: model\.base_width, model\.shortcut"),
    "a noise reference of one seed": (
        {"noise_reference": {"point": {"model.n": 1, "model.shortcut": "A", "model.base_width": 4}, "seeds": [0]}},
        r"noise_reference\.seeds: List should have at least 2 items"),
    "one objective": ({"objectives": [TWO[0]]}, r"objectives: List should have at least 2 items"),
    "a repeated objective": ({"objectives": [TWO[0], TWO[0]]}, r"repeated: val_error"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_message_and_exit_2_before_ray_starts(case, tmp_path, capsys, no_ray):
    fields, message = BAD[case]
    path = study_file(tmp_path, **fields)
    with pytest.raises(StudyError, match=message):
        load_study(path)
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err
    assert not (tmp_path / "mlflow.db").exists()  # nothing written
    assert no_ray == []  # Ray was never asked to start


def test_a_single_metric_study_is_unchanged(tmp_path):
    study = load_study(study_file(tmp_path, objectives=None))
    assert (study.metric.name, study.metric.mode, study.objectives) == ("test_error", "min", ())
    assert "costs" not in draw(study, 1)[0]  # reports carry no costs, as before


def test_objectives_give_the_metric_and_the_result_keys(tmp_path):
    study = load_study(study_file(tmp_path, objectives=[*TWO, {"name": "images_per_s", "mode": "max"}]))
    assert (study.metric.name, study.metric.mode) == ("val_error", "min")
    assert objective_keys(study) == [(OBJECTIVE, "min"), ("train_flops", "min"), ("images_per_s", "max")]


# -- budget and conditional axes --------------------------------------------------------------------------


def test_the_budget_drops_points_before_they_train(tmp_path, capsys):
    costs = {n: trial_costs(TrainConfig.model_validate({**TINY, "model": {"n": n, "base_width": 8}}))["macs"]
             for n in (1, 2, 3)}
    bound = (costs[1] + costs[2]) / 2  # width 8 at n = 1 is within, at n >= 2 above
    study = load_study(study_file(tmp_path, search={"method": "random", "num_samples": 8, "seed": 0},
                                  constraints={"max_macs": bound}))
    specs = draw(study)
    assert len(specs) == 8 and len({s["group"] for s in specs}) == 8  # distinct points
    assert all(s["costs"]["macs"] <= bound for s in specs)
    assert all(trial_costs(TrainConfig.model_validate(s["config"]))["macs"] == s["costs"]["macs"] for s in specs)
    out = capsys.readouterr().out
    assert "over the budget (macs" in out and f"max_macs {bound:.3g}" in out


def test_grid_studies_apply_the_budget_at_expansion(tmp_path):
    both = load_study(study_file(tmp_path, search=None, objectives=None))
    bound = sorted({trial_costs(t.config)["params"] for t in both.trials()})[3]
    study = load_study(study_file(tmp_path, search=None, objectives=None, constraints={"max_params": bound}))
    assert 0 < len(study.trials()) < len(both.trials())
    assert all(trial_costs(t.config)["params"] <= bound for t in study.trials())


def test_conditional_axes_never_reach_a_trial(tmp_path, capsys):
    study = load_study(study_file(
        tmp_path, search={"method": "tpe", "num_samples": 6, "seed": 2},
        space={**SPACE, "model.activation": ["original", "full_preact"]},
        constraints={"exclude": [{"model.shortcut": "none", "model.activation": "full_preact"},  # residual only
                                 {"model.shortcut": "B", "model.n": 3}]},  # n's range per shortcut
    ))
    configs = [TrainConfig.model_validate(s["config"]).model for s in draw(study)]
    assert len(configs) == 6
    assert not any(m.shortcut == "none" and m.activation == "full_preact" for m in configs)
    assert not any(m.shortcut == "B" and m.n == 3 for m in configs)


# -- samplers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["random", "tpe", "nsga2", "gp"])
def test_each_sampler_is_seeded_and_draws_reproducibly(method, tmp_path):
    def first_points(seed: int) -> list[str]:
        search = {"method": method, "num_samples": 14, "seed": seed, **({"population_size": 4} if method == "nsga2" else {})}
        study = load_study(study_file(tmp_path, search=search))
        return [s["group"] for s in draw(study)]

    a, b = first_points(0), first_points(0)
    assert a == b and len(set(a)) == 14  # past TPE's and GP's 10 random start-up points, NSGA-II's first generations
    assert first_points(1) != a


def test_nsga2_searcher_pickles_and_samples_on_as_it_would_have(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(__import__("optuna").samplers.NSGAIISampler(seed=0))  # why the wrapper exists
    study = load_study(study_file(tmp_path, search={"method": "nsga2", "num_samples": 12, "seed": 0,
                                                    "population_size": 4}))
    searcher = StudySearcher(study, metric=OBJECTIVE, mode="min")
    assert isinstance(searcher.sources[0]._sampler, PicklableNSGAII)  # noqa: SLF001
    pickle.loads(pickle.dumps(searcher))  # as tune.Tuner does at start
    for i in range(6):
        spec = searcher.suggest(f"t{i}")["trial"]
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: 0.1 * i, **spec["costs"]})
    copy = pickle.loads(pickle.dumps(searcher))
    ahead = [searcher.suggest(f"u{i}")["trial"]["group"] for i in range(4)]
    assert [copy.suggest(f"u{i}")["trial"]["group"] for i in range(4)] == ahead


def test_the_sampler_is_told_the_seed_means_of_each_objective(tmp_path):
    study = load_study(study_file(tmp_path, seeds=[0, 1], search={"method": "tpe", "num_samples": 2, "seed": 0}))
    searcher = StudySearcher(study, metric=OBJECTIVE, mode="min")
    specs = [searcher.suggest(f"t{i}")["trial"] for i in range(4)]
    assert [s["config"]["seed"] for s in specs] == [0, 1, 0, 1]
    for i, (spec, error) in enumerate(zip(specs, [0.2, 0.4, 0.5, math.inf])):  # inf: a diverged replicate
        searcher.on_trial_complete(f"t{i}", {OBJECTIVE: error, **spec["costs"]})
    told = [t for t in searcher.sources[0]._ot_study.trials if t.state.name == "COMPLETE"]  # noqa: SLF001
    assert [t.values for t in told] == [[pytest.approx(0.3), specs[0]["costs"]["train_flops"]],
                                        [math.inf, specs[2]["costs"]["train_flops"]]]


# -- design spaces and the noise reference --------------------------------------------------------------------


def test_design_spaces_draw_the_same_count_each_then_the_noise_reference(tmp_path):
    study = load_study(study_file(
        tmp_path, objectives=None, search={"method": "random", "num_samples": 3, "seed": 0},
        space={**SPACE, "trainer.lr": {"low": 0.05, "high": 0.2, "log": True}},
        design_spaces={"plain": {"model.shortcut": ["none"]}, "residual": {"model.shortcut": ["A", "B"],
                                                                            "trainer.lr": {"low": 0.1, "high": 0.2}}},
        noise_reference={"point": {"model.n": 1, "model.shortcut": "A", "model.base_width": 4, "trainer.lr": 0.1},
                         "seeds": [3, 4, 5]},
    ))
    assert study.num_trials == 3 * 2 + 3
    specs = draw(study)
    assert [s["design_space"] for s in specs] == ["plain"] * 3 + ["residual"] * 3 + [layout.NOISE_SPACE] * 3
    configs = [TrainConfig.model_validate(s["config"]) for s in specs]
    assert all(c.model.shortcut == "none" for c in configs[:3])
    assert all(c.model.shortcut in ("A", "B") and 0.1 <= c.trainer.lr <= 0.2 for c in configs[3:6])
    assert [c.seed for c in configs[6:]] == [3, 4, 5] and len({s["group"] for s in specs[6:]}) == 1


# -- through Ray Tune ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_two_objective_study_with_early_stopping_records_costs_and_design_spaces(tmp_path, ray_session):
    path = study_file(
        tmp_path, "mo_e2e", max_concurrent=2,
        search={"method": "random", "num_samples": 2, "seed": 0},
        space={"model.n": [1], "model.shortcut": ["none", "A"], "model.base_width": [4, 8]},
        design_spaces={"plain": {"model.shortcut": ["none"]}, "residual": {"model.shortcut": ["A"]}},
        noise_reference={"point": {"model.n": 1, "model.shortcut": "A", "model.base_width": 4}, "seeds": [0, 1]},
        early_stopping={"grace_period": 10, "reduction_factor": 2},
    )
    study = load_study(path, ["trainer.iterations=30"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_study(study, tracking_uri=uri, storage_path=tmp_path / "ray_results") == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mo_e2e")
    children = client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = 'trial'")
    assert len(children) == 6
    spaces = Counter(run.data.tags[layout.TAG_DESIGN_SPACE] for run in children)
    assert spaces == {"plain": 2, "residual": 2, layout.NOISE_SPACE: 2}
    for run in children:
        config = TrainConfig.model_validate({k: v for k, v in yaml.safe_load(
            Path(client.download_artifacts(run.info.run_id, layout.ARTIFACT_CONFIG, str(tmp_path / run.info.run_id))
                 ).read_text()).items()})
        costs = trial_costs(config)
        assert run.data.params[layout.PARAM_TRAIN_FLOPS] == str(costs["train_flops"])
        assert run.data.params[layout.PARAM_MODEL_MACS] == str(costs["macs"])
        assert run.data.tags[layout.TAG_STATUS] in ("finished", "stopped")
    assert any(run.data.tags[layout.TAG_STATUS] == "stopped" for run in children)  # the scheduler stopped one
    parent, = client.search_runs([experiment.experiment_id], f"tags.`{layout.TAG_ROLE}` = 'study'")
    assert parent.data.params["objectives"] == "val_error min, train_flops min"
