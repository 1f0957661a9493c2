"""Study files: the shipped studies, the invalid corpus, overrides, constraints, includes, budget, plan."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from ablate.config import ConfigError, ModelSpec, TrainConfig
from ablate.study import StudyError, format_plan, load_study, plan_rows
from ablate.study.core import distinct_labels

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").rglob("*.yaml"))  # studies/fmnist/NAME.yaml is study fmnist_NAME
INVALID = sorted((ROOT / "tests" / "invalid_studies").glob("*.yaml"))

# (configurations, seeds) of every shipped study; sampled studies: (num_samples, seeds)
EXPECTED = {
    "depth_sweep": (11, 2),  # residual n in {3, 5, 7, 9, 18, 200} + plain n in {3, 5, 7, 9, 18}
    "shortcuts": (8, 3),  # {A, B, C, none} x {20, 56 layers}
    "blocks": (4, 3),  # basic, bottleneck, preact, preact_bottleneck at n = 18
    "warmup": (3, 3),  # ResNet-110 x {none, paper, linear}
    "deep_1202": (2, 3),  # 110 and 1202 layers
    "quickstart": (4, 3),  # {plain, residual} x {8, 32 layers}
    "lr_search": (12, 1),  # tpe samples
    "fmnist_depth_sweep": (10, 3),  # {plain, residual} x {8, 20, 32, 56, 110 layers}
    "fmnist_shortcuts": (8, 3),  # {none, A, B, C} x {20, 56 layers}
    "fmnist_overfitting": (2, 3),  # resnet20, resnet56 on 500 images
    "fmnist_warmup": (3, 2),  # resnet110 x {none, paper, linear}
    "imagenet_degradation": (4, 2),  # plain/residual x {18, 34} ImageNet layouts
    "unit_variants": (10, 2),  # He et al. 2016 shortcut variants and activation placements
    "fmnist_deep_pair": (3, 3),  # resnet20, plain20, resnet110 on 500 images
    "fmnist_pareto": (40, 1),  # NSGA-II samples
    "fmnist_design_spaces": (16, 1),  # random models per design space (3 of them), plus 5 noise-reference seeds
}
EXTRA_TRIALS = {"fmnist_design_spaces": 16 * 2 + 5}  # trials beyond configs x seeds


def study_name(path: Path) -> str:
    """The name a shipped study file declares: its stem, or its stem prefixed by its folder under studies/."""
    folder = path.parent.relative_to(ROOT / "studies")
    prefixed = "_".join((*folder.parts, path.stem))
    return prefixed if prefixed in EXPECTED else path.stem


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def study_text(space: str = "", extra: str = "") -> str:
    """A small valid study around a space (indented YAML lines under `space:`)."""
    return f"name: t\nquestion: q?\nspace:\n{textwrap.indent(textwrap.dedent(space), '  ')}\n{textwrap.dedent(extra)}"


# -- shipped studies -------------------------------------------------------------------------------


def test_every_shipped_study_has_an_expected_count():
    assert {study_name(path) for path in STUDIES} == set(EXPECTED)


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_loads_and_expands(path):
    study = load_study(path)
    configs, seeds = EXPECTED[study_name(path)]
    assert study.name == study_name(path)
    assert path.read_text().startswith("# Question:") and len(study.question) > 20
    assert len(study.seeds) == seeds and study.num_trials == configs * seeds + EXTRA_TRIALS.get(study.name, 0)
    if study.sampled:
        assert study.search.num_samples == configs
        return
    trials = study.trials()
    assert len(trials) == configs * seeds
    groups = {trial.group for trial in trials}
    assert len(groups) == configs
    for group in groups:  # replicates share a group, one per seed
        assert sorted(t.seed for t in trials if t.group == group) == sorted(study.seeds)
    first = [t.label for t in trials if t.seed == study.seeds[0]]
    assert len(set(first)) == configs  # labels tell the configurations apart


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_resolved_yaml_loads_back_to_the_same_study(path, tmp_path):
    study = load_study(path)
    again = load_study(write(tmp_path, "resolved.yaml", study.resolved_yaml()))
    assert again.axes == study.axes and again.base == study.base and again.seeds == study.seeds
    if not study.sampled:
        assert [t.config for t in again.trials()] == [t.config for t in study.trials()]


def test_depth_sweep_is_table_6_and_fig_6():
    trials = load_study(ROOT / "studies/depth_sweep.yaml", ["seeds=[0]"]).trials()
    assert [t.label for t in trials] == [
        "resnet20", "plain20", "resnet32", "plain32", "resnet44", "plain44",
        "resnet56", "plain56", "resnet110", "plain110", "resnet1202",
    ]
    for trial in trials:
        expected = "paper" if trial.config.model.n >= 18 else "none"
        assert trial.config.trainer.warmup.policy == expected
        assert trial.config.trainer.iterations == 64000 and trial.config.data.name == "cifar10"


def test_blocks_uses_projections_for_bottlenecks():
    trials = load_study(ROOT / "studies/blocks.yaml", ["seeds=[0]"]).trials()
    assert {t.label: t.config.model.shortcut for t in trials} == {
        "resnet110": "A", "resnet164": "B", "preact_resnet110": "A", "preact_resnet164": "B",
    }


def test_warmup_labels_name_the_policy():
    labels = [t.label for t in load_study(ROOT / "studies/warmup.yaml", ["seeds=[0]"]).trials()]
    assert labels == ["resnet110 warmup.policy=none", "resnet110 warmup.policy=paper", "resnet110 warmup.policy=linear"]


def test_quickstart_runs_two_one_core_trials_on_fashion_mnist():
    study = load_study(ROOT / "studies/quickstart.yaml")
    assert (study.resources.cpu, study.resources.gpu, study.max_concurrent) == (1, 0, 2)
    assert {t.config.data.name for t in study.trials()} == {"fashion-mnist"}
    assert sorted(t.config.model.depth for t in study.trials()) == [8] * 6 + [32] * 6
    assert sorted({t.seed for t in study.trials()}) == [0, 1, 2]  # the answer is stated with a seed spread
    points = {t.config.trainer.iterations // t.config.trainer.eval_every for t in study.trials()}
    assert min(points) >= 15  # Fig. 6-style curves, not three segments


def test_imagenet_degradation_sweeps_the_table_1_layouts():
    study = load_study(ROOT / "studies/fmnist/imagenet_degradation.yaml")
    assert study.num_trials == 4 * 2
    rows = plan_rows(study)
    assert {(r["label"], r["model.n"], r["params"]) for r in rows} == {
        ("plain18-cifar-w8", (2, 2, 2, 2), 173_346), ("resnet18-cifar-A-w8", (2, 2, 2, 2), 173_346),
        ("plain34-cifar-w8", (3, 4, 6, 3), 332_098), ("resnet34-cifar-A-w8", (3, 4, 6, 3), 332_098),
    }


def test_unit_variants_sweeps_shortcuts_and_placements():
    """Six shortcuts with the original unit, five placements with the identity (B) shortcut; the rule
    scales F by 0.5 for the scaled shortcut (the case He et al. 2016 could train)."""
    study = load_study(ROOT / "studies/fmnist/unit_variants.yaml")
    assert study.num_trials == 10 * 2
    rows = [r for r in plan_rows(study) if r["seed"] == 0]
    assert {(r["model.shortcut"], r["model.activation"]) for r in rows} == {
        *((s, "original") for s in ("B", "scaled", "gated", "shortcut_gated", "C", "dropout")),
        *(("B", a) for a in ("bn_after_add", "relu_before_add", "relu_preact", "full_preact")),
    }
    assert {r["model.shortcut"]: r["model.residual_scale"] for r in rows}["scaled"] == 0.5
    assert "preact_resnet56-B-w8" in format_plan(rows)


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_search_space_files_load(path, tmp_path):
    sampled = "low:" in path.read_text()
    method = "search: {method: tpe, num_samples: 4}" if sampled else ""
    study = load_study(write(tmp_path, "studies/s.yaml", study_text(f"include: [{path}]", method)))
    assert study.axes and all(axis.categorical != sampled for axis in study.axes)


# -- the invalid corpus ----------------------------------------------------------------------------


def _header(path: Path, tag: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith(f"# {tag}:")]


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_study_fails_with_a_message_naming_file_key_and_what_is_allowed(path):
    expected = _header(path, "expect")
    assert expected, f"{path.name}: state the expected message in '# expect:' lines"
    overrides = " ".join(_header(path, "overrides")).split()
    with pytest.raises(StudyError) as caught:
        load_study(path, overrides)
    message = str(caught.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_study_error_is_a_config_error_and_a_value_error():
    assert issubclass(StudyError, ConfigError) and issubclass(StudyError, ValueError)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(StudyError, match="nope.yaml: no such file"):
        load_study(tmp_path / "nope.yaml")


# -- overrides -------------------------------------------------------------------------------------


def test_overrides_change_the_trials_and_are_recorded(tmp_path):
    overrides = ["trainer.iterations=20", "seeds=[0, 1]", "space.model.n=[2]", "early_stopping.grace_period=5"]
    study = load_study(ROOT / "studies/quickstart.yaml", overrides)
    trials = study.trials()
    assert [(t.label, t.seed) for t in trials] == [("plain14-w8", 0), ("resnet14-w8", 0), ("plain14-w8", 1), ("resnet14-w8", 1)]
    assert {t.config.trainer.iterations for t in trials} == {20}
    assert study.early_stopping.grace_period == 5
    assert study.overrides == tuple(overrides)
    resolved = study.resolved_yaml()
    assert "# overrides: trainer.iterations=20" in resolved
    again = load_study(write(tmp_path, "r.yaml", resolved))
    assert [t.config for t in again.trials()] == [t.config for t in trials]


def test_override_can_switch_to_a_sampled_search():
    study = load_study(
        ROOT / "studies/quickstart.yaml",
        ["search.method=random", "search.num_samples=3", "space.model.n={low: 1, high: 4}", "seeds=[0]"],
    )
    assert study.sampled and study.num_trials == 3
    assert study.axes[0].integer and study.axes[0].describe() == "integer [1, 4]"


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("nonsense", ["override 'nonsense': expected KEY=VALUE"]),
        ("trainer.iterations=lots", ["(override 'trainer.iterations=lots'): trainer.iterations", "valid integer"]),
        ("trainer.epoch=2", ["(override 'trainer.epoch=2'): trainer.epoch: unknown key", "did you mean 'epochs'?"]),
        ("seeds.0=3", ["override 'seeds.0=3': seeds is a list, not a section"]),
        ("trainer.lr=[1", ["override 'trainer.lr=[1'", "malformed YAML"]),
        ("space.model.shortcut=[A, E]", ["(override 'space.model.shortcut=[A, E]'): space.model.shortcut[1]",
                                         "'A', 'B', 'C', 'none', 'scaled'"]),
        ("model.n=3", ["(override 'model.n=3'): space.model.n", "model.n is also fixed"]),
    ],
)
def test_bad_override_names_the_override(override, fragments):
    with pytest.raises(StudyError) as caught:
        load_study(ROOT / "studies/quickstart.yaml", [override])
    assert "studies/quickstart.yaml" in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)


# -- constraints, budget, order --------------------------------------------------------------------


CONSTRAINED = study_text(
    """
    model.n: [3, 9, 18]
    model.shortcut: [A, none]
    """,
    """
    constraints:
      exclude:
        - {model.n: 18, model.shortcut: none}
      set:
        - when: {model.n: [9, 18]}
          then: {trainer.warmup.policy: paper}
        - when: {trainer.warmup.policy: paper, model.shortcut: none}
          then: {trainer.lr: 0.05}
    """,
)


def _summary(study):
    return [(t.config.model.n, t.config.model.shortcut, t.config.trainer.warmup.policy, t.config.trainer.lr)
            for t in study.trials()]


def test_constraints_drop_and_adjust_the_right_trials(tmp_path):
    study = load_study(write(tmp_path, "c.yaml", CONSTRAINED))
    assert _summary(study) == [
        (3, "A", "none", 0.1), (3, "none", "none", 0.1),
        (9, "A", "paper", 0.1), (9, "none", "paper", 0.05),  # the second rule sees what the first set
        (18, "A", "paper", 0.1),
    ]


def test_excludes_match_after_the_set_rules(tmp_path):
    study = load_study(write(tmp_path, "c.yaml", CONSTRAINED), ["constraints.exclude=[{trainer.lr: 0.05}]"])
    assert _summary(study) == [(3, "A", "none", 0.1), (3, "none", "none", 0.1), (9, "A", "paper", 0.1),
                               (18, "A", "paper", 0.1)]  # plain n=9 and n=18 got lr 0.05 from the rule


def test_constraint_values_are_read_as_the_config_reads_them(tmp_path):
    text = study_text("trainer.weight_decay: [1e-4, 5e-4]", "constraints: {exclude: [{trainer.weight_decay: 5.0e-4}]}")
    study = load_study(write(tmp_path, "c.yaml", text))  # 1e-4 (no dot) is a number, 5e-4 == 5.0e-4
    assert [t.config.trainer.weight_decay for t in study.trials()] == [1e-4]


def test_budget_allows_exactly_max_trials_and_refuses_more():
    path = ROOT / "studies/quickstart.yaml"
    assert load_study(path, ["search.max_trials=4", "seeds=[0]"]).num_trials == 4
    with pytest.raises(StudyError, match=r"search.max_trials: the study would start 8 trials"):
        load_study(path, ["search.max_trials=7", "seeds=[0, 1]"])
    with pytest.raises(StudyError, match=r"12 samples x 1 seed\(s\)"):
        load_study(ROOT / "studies/lr_search.yaml", ["search.max_trials=5"])


def test_trials_run_replicate_by_replicate():
    trials = load_study(ROOT / "studies/quickstart.yaml", ["seeds=[7, 3]"]).trials()
    assert [t.seed for t in trials] == [7, 7, 7, 7, 3, 3, 3, 3]
    assert [t.group for t in trials[:4]] == [t.group for t in trials[4:]]


def test_section_axis_merges_dicts_into_the_section(tmp_path):
    text = study_text("trainer.warmup: [{policy: paper}, {policy: linear, ramp_iterations: 100}]")
    trials = load_study(write(tmp_path, "w.yaml", text)).trials()
    assert [(t.config.trainer.warmup.policy, t.config.trainer.warmup.ramp_iterations) for t in trials] == [
        ("paper", 400), ("linear", 100),
    ]
    assert trials[1].label == "resnet20 warmup.policy=linear warmup.ramp_iterations=100"


def test_distinct_labels_add_only_the_keys_that_differ():
    configs = [TrainConfig(model=ModelSpec(n=3)), TrainConfig(model=ModelSpec(n=5)),
               TrainConfig(model=ModelSpec(n=5), trainer={"lr": 0.05})]
    assert distinct_labels(configs) == ["resnet20", "resnet32 lr=0.1", "resnet32 lr=0.05"]


# -- includes --------------------------------------------------------------------------------------


def test_own_axes_replace_included_ones(tmp_path):
    write(tmp_path, "search_spaces/d.yaml", "model.n: [3, 5]\nmodel.shortcut: [A, none]\n")
    study = load_study(write(tmp_path, "studies/s.yaml", study_text("include: [d.yaml]\nmodel.n: [9]")))
    assert [(a.key, a.values) for a in study.axes] == [("model.n", (9,)), ("model.shortcut", ("A", "none"))]
    assert "include" not in study.document["space"]  # the resolved document holds the axes themselves


def test_include_search_order(tmp_path):
    project = tmp_path / "project"
    write(project, "pyproject.toml", "")
    write(project, "search_spaces/s.yaml", "model.n: [3]\n")
    study_path = write(project, "a/studies/study.yaml", study_text("include: [s.yaml]"))
    assert load_study(study_path).axes[0].values == (3,)  # 3. the project root's search_spaces/
    write(project, "a/search_spaces/s.yaml", "model.n: [5]\n")
    assert load_study(study_path).axes[0].values == (5,)  # 2. ../search_spaces/ beside the study
    write(project, "a/studies/s.yaml", "model.n: [7]\n")
    assert load_study(study_path).axes[0].values == (7,)  # 1. the study's own folder


def test_a_study_never_includes_itself(tmp_path):
    write(tmp_path, "search_spaces/s.yaml", "model.n: [3, 5]\n")
    study = load_study(write(tmp_path, "studies/s.yaml", study_text("include: [s.yaml]")))
    assert study.axes[0].values == (3, 5)


def test_include_cycle_is_refused(tmp_path):
    write(tmp_path, "search_spaces/a.yaml", "include: [b.yaml]\nmodel.n: [3]\n")
    write(tmp_path, "search_spaces/b.yaml", "include: [a.yaml]\n")
    with pytest.raises(StudyError, match="'a.yaml' includes itself"):
        load_study(write(tmp_path, "studies/s.yaml", study_text("include: [a.yaml]")))


# -- sampled searches ------------------------------------------------------------------------------


SAMPLED = study_text(
    """
    model.n: {low: 1, high: 3}
    model.shortcut: [A, none]
    trainer.lr: {low: 0.01, high: 1.0, log: true}
    """,
    """
    search: {method: random, num_samples: 5, seed: 3}
    seeds: [0, 1]
    constraints:
      exclude:
        - {model.n: 3, model.shortcut: none}
    """,
)


def test_sampled_study_exposes_axes_and_turns_points_into_trials(tmp_path):
    study = load_study(write(tmp_path, "s.yaml", SAMPLED))
    assert study.sampled and study.num_trials == 10 and study.search.seed == 3
    assert [a.describe() for a in study.axes] == ["integer [1, 3]", "{A, none}", "log-uniform [0.01, 1]"]
    trial = study.trial_for({"model.n": np.int64(2), "model.shortcut": "none", "trainer.lr": np.float64(0.02)}, seed=1)
    assert (trial.config.model.n, trial.config.trainer.lr, trial.seed) == (2, 0.02, 1)
    assert trial.label == "plain14 lr=0.02"
    assert study.trial_for({"model.n": 3, "model.shortcut": "none", "trainer.lr": 0.1}, seed=0) is None
    with pytest.raises(StudyError, match=r"missing axes \['trainer.lr'\]"):
        study.trial_for({"model.n": 2, "model.shortcut": "A"}, seed=0)
    with pytest.raises(StudyError, match="draws its points while it runs"):
        study.trials()


def test_trial_for_a_grid_point_matches_the_expanded_trial():
    study = load_study(ROOT / "studies/depth_sweep.yaml")
    expanded = next(t for t in study.trials() if t.label == "plain110" and t.seed == 1)
    trial = study.trial_for({"model.n": 18, "model.shortcut": "none"}, seed=1)
    assert trial == expanded
    assert study.trial_for({"model.n": 200, "model.shortcut": "none"}, seed=0) is None


# -- plan ------------------------------------------------------------------------------------------


def test_plan_rows_resnet20_counts_and_flops():
    study = load_study(ROOT / "studies/depth_sweep.yaml", ["seeds=[0]", "space.model.n=[3]"])
    row = next(r for r in plan_rows(study) if r["label"] == "resnet20")
    assert (row["params"], row["macs"], row["iterations"]) == (269_722, 40_551_040, 64_000)
    assert row["train_flops"] == 6 * 40_551_040 * 64_000 * 128
    assert (row["model.n"], row["model.shortcut"], row["trainer.warmup.policy"]) == (3, "A", "none")
    assert row["group"] == study.trials()[0].group and row["seed"] == 0


def test_plan_converts_epochs_with_the_training_split():
    path = ROOT / "studies/depth_sweep.yaml"
    epochs = ["trainer.iterations=null", "trainer.epochs=2"]  # the study file sets iterations: 64000
    study = load_study(path, ["seeds=[0]", "space.model.n=[3]", *epochs])
    assert {r["iterations"] for r in plan_rows(study)} == {2 * (45_000 // 128)}  # 50k less the 5k validation
    study = load_study(path, ["seeds=[0]", "space.model.n=[3]", *epochs, "data.train_size=1000"])
    assert {r["iterations"] for r in plan_rows(study)} == {2 * (1000 // 128)}


def test_plan_uses_the_data_sets_shape():
    rows = plan_rows(load_study(ROOT / "studies/quickstart.yaml", ["model.base_width=16"]))
    plain8 = next(r for r in rows if r["label"] == "plain8")
    assert (plain8["params"], plain8["macs"]) == (75_002, 9_145_216)  # 1 channel, 28x28 (hand-counted)


def test_plan_of_synthetic_data(tmp_path):
    from ablate.models import count_macs

    text = study_text("model.shortcut: [A]", """
        data: {name: synthetic, synthetic_shape: [2, 16, 16], synthetic_classes: 5, synthetic_train: 600, val_size: 100}
        trainer: {epochs: 3}
    """)
    (row,) = plan_rows(load_study(write(tmp_path, "s.yaml", text)))
    assert row["iterations"] == 3 * (500 // 128)
    assert row["macs"] == count_macs(ModelSpec(), in_channels=2, num_classes=5, image_size=16) != 40_551_040


def test_format_plan_table_and_totals():
    rows = plan_rows(load_study(ROOT / "studies/quickstart.yaml", ["seeds=[0, 1]"]))
    text = format_plan(rows)
    assert "resnet32" in text and "model.shortcut" in text
    total = sum(r["train_flops"] for r in rows) / 1e15
    assert text.splitlines()[-1] == f"8 trials (4 configurations x 2 seeds), {total:.3g} PFLOP of training"


def test_format_plan_of_a_sampled_study():
    rows = plan_rows(load_study(ROOT / "studies/lr_search.yaml"))
    assert [r["axis"] for r in rows] == ["trainer.lr", "trainer.weight_decay"]
    text = format_plan(rows)
    assert "log-uniform [0.01, 1]" in text and text.endswith("tpe: 12 samples x 1 seed = 12 trials")
