"""Lesions (Veit et al. 2016): a deleted unit is its shortcut path, exactly; plain nets refuse what they
cannot lose; the sweep and `ablate lesion` on recorded studies, including those that kept no weights or
damaged ones; end to end on a tiny study trained through Ray."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from ablate.cli import main
from ablate.config import DataConfig, ModelSpec, TrainConfig
from ablate.data import DeviceData, load_dataset
from ablate.lesion import measure_error, sweep
from ablate.models import build_model, delete_units, unit_sites
from ablate.models.blocks import ZeroPadShortcut
from ablate.tracking import layout
from ablate.tracking.reader import load_study_records
from ablate.device import speed_defaults
from ablate.weights import load_weights
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri

BLOCKS = ["basic", "bottleneck", "preact", "preact_bottleneck"]


def trained_like(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """A net in eval mode whose BN layers hold non-trivial statistics and affine weights, as after training."""
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def without_unit(model: torch.nn.Module, spec: ModelSpec, stage: int, index: int) -> torch.nn.Module:
    """The net built with one unit fewer in ``stage``, the other units' weights copied."""
    units = list(spec.stage_units)
    units[stage] -= 1
    smaller = build_model(spec.model_copy(update={"n": tuple(units)}), num_classes=10).eval()
    prefix = f"stages.{stage}."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            j, rest = key[len(prefix):].split(".", 1)
            if int(j) == index:
                continue
            key = f"{prefix}{int(j) - (int(j) > index)}.{rest}"
        state[key] = value
    smaller.load_state_dict(state)
    return smaller


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("shortcut", ["A", "B", "none"])
def test_deleting_a_unit_is_the_net_built_without_it(block, shortcut):
    spec = ModelSpec(n=3, block=block, shortcut=shortcut, base_width=4)
    model = trained_like(spec)
    x = torch.randn(4, 3, 16, 16)
    for stage, index in [(0, 1), (1, 2), (2, 1)]:
        lesioned = delete_units(model, [f"stages.{stage}.{index}"])
        expected = without_unit(model, spec, stage, index)(x)
        torch.testing.assert_close(lesioned(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x), expected, atol=1e-3)  # the unit did something: the test can fail


@pytest.mark.parametrize("block", BLOCKS)
def test_a_deleted_option_c_unit_is_its_projection(block):
    """Option C projects on every unit, so no net lacks it; the deleted unit is that projection: followed by
    ReLU in the original unit, read from the pre-activated input ReLU(BN(x)) in pre-activation units."""
    spec = ModelSpec(n=2, block=block, shortcut="C", base_width=4)
    model = trained_like(spec)
    unit = model.stages[1][1]
    x = torch.randn(4, unit.conv1.in_channels, 8, 8)
    lesioned = delete_units(model, ["stages.1.1"]).stages[1][1]
    if spec.placement == "full_preact":
        expected = unit.shortcut(F.relu(unit.bn1(x)))
    else:
        expected = F.relu(unit.shortcut(x))
    torch.testing.assert_close(lesioned(x), expected)
    assert not torch.allclose(unit(x), expected, atol=1e-3)


def test_all_branches_zeroed_compute_the_shortcut_path_exactly():
    """Residual-A net: the last BN of every branch zeroed (F = 0), all units deleted, and the shortcut path
    written out (stem, then ReLU(zero-pad) at each stage transition, identities elsewhere, head) agree."""
    spec = ModelSpec(n=3, shortcut="A", base_width=4)
    model = trained_like(spec)
    x = torch.randn(4, 3, 16, 16)
    lesioned = delete_units(model, [site.name for site in unit_sites(model)])
    for stage in model.stages:
        for unit in stage:
            unit.bn2.weight.data.zero_()
            unit.bn2.bias.data.zero_()
    h = model.stem(x)
    for i, stage in enumerate(model.stages):
        if i > 0:
            h = F.relu(ZeroPadShortcut(stage[0].conv1.in_channels, stage[0].conv2.out_channels, 2)(h))
    path = model.head(h)
    assert torch.equal(lesioned(x), path)
    assert torch.equal(model(x), path)
    assert delete_units(model, []) is not model and all(  # a copy; the original keeps its units
        type(unit).__name__ == "BasicBlock" for stage in model.stages for unit in stage)


def test_a_plain_net_refuses_to_delete_a_unit_that_changes_shape():
    model = trained_like(ModelSpec(n=3, shortcut="none", base_width=4))
    sites = {site.name: site for site in unit_sites(model)}
    assert [name for name, site in sites.items() if site.transition] == ["stages.1.0", "stages.2.0"]
    assert [name for name, site in sites.items() if not site.deletable] == ["stages.1.0", "stages.2.0"]
    with pytest.raises(ValueError, match=r"plain20-w4: unit stages\.1\.0 changes the shape .* has no shortcut"):
        delete_units(model, ["stages.0.1", "stages.1.0"])
    with pytest.raises(ValueError, match=r"stages\.7\.0: not a unit of plain20-w4"):
        delete_units(model, ["stages.7.0"])
    # a residual net can lose its transition units: their zero-padding shortcut remains
    residual = trained_like(ModelSpec(n=3, shortcut="A", base_width=4))
    assert all(site.deletable for site in unit_sites(residual))
    assert delete_units(residual, ["stages.1.0"])(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def small_test_split(size: int = 96) -> DeviceData:
    data = DataConfig(name="synthetic", synthetic_shape=(3, 16, 16), synthetic_train=64, synthetic_test=size,
                      val_size=0)
    splits = load_dataset(data)
    return DeviceData(splits.test_x, splits.test_y, mean=splits.mean, std=splits.std, device="cpu", pad=0)


def test_sweep_covers_every_unit_and_each_k_with_seeded_draws():
    model = trained_like(ModelSpec(n=2, shortcut="none", base_width=4))
    data = small_test_split()
    result = sweep(model, data, max_k=10, draws=3, rng=np.random.default_rng(1), batch_size=40)
    assert result.base_error == measure_error(model, data, batch_size=96)
    assert [site.name for site in result.sites] == [f"stages.{i}.{j}" for i in range(3) for j in range(2)]
    assert [e is None for e in result.single] == [False, False, True, False, True, False]  # transitions
    assert result.single[1] == measure_error(delete_units(model, ["stages.0.1"]), data, batch_size=96)
    assert result.k == (1, 2, 3, 4) and [len(row) for row in result.draws] == [3] * 4  # 4 deletable units
    assert all(0 <= e <= 1 for row in result.draws for e in row)
    again = sweep(model, data, max_k=10, draws=3, rng=np.random.default_rng(1), batch_size=40)
    assert again == result
    record = result.as_json()
    assert record["units"][2] == {"name": "stages.1.0", "stage": 2, "transition": True, "error": None}
    increases = [e - result.base_error for e in result.single if e is not None]
    assert result.metrics()[layout.METRIC_LESION_MEAN] == pytest.approx(sum(increases) / 4)
    assert result.metrics()[layout.METRIC_LESION_MAX] == max(increases)


# -- `ablate lesion` on recorded studies ---------------------------------------------------------------


def fake_study(tmp_path: Path, name: str, trials) -> tuple[str, list]:
    uri = new_tracking_uri(tmp_path / "store")
    client = MlflowClient(uri)
    log_study(client, name, [Invocation(tuple(trials))], artifact_root=tmp_path / "artifacts")
    return uri, load_study_records(name, uri).trials


def test_lesion_of_a_study_whose_trials_kept_no_weights_names_them_and_exits_2(tmp_path, capsys):
    uri, _ = fake_study(tmp_path, "old", [FakeTrial(seed=0), FakeTrial(seed=1), FakeTrial(seed=2, status="diverged")])
    assert main(["lesion", "--study", "old", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("ablate")]) == 1
    assert "2 of 2 finished trials kept no weights" in err
    assert "resnet20 seed 0 (run " in err and "resnet20 seed 1 (run " in err and "no weights.pt" in err


def test_a_damaged_weights_artifact_is_named_not_a_traceback(tmp_path, capsys):
    uri, trials = fake_study(tmp_path, "damaged", [FakeTrial(seed=0), FakeTrial(seed=1)])
    client = MlflowClient(uri)
    for trial in trials:
        spec = ModelSpec(n=3, base_width=4)
        config = TrainConfig(model=spec, data=DataConfig(name="synthetic"), seed=trial.seed)
        client.log_text(trial.run_id, config.model_dump_json(), layout.ARTIFACT_CONFIG)
        folder = tmp_path / trial.run_id
        folder.mkdir()
        weights = folder / layout.ARTIFACT_WEIGHTS
        if trial.seed == 0:
            weights.write_bytes(b"not a torch file")
        else:  # the weights of another net
            torch.save(build_model(ModelSpec(n=1, base_width=4)).state_dict(), weights)
        client.log_artifact(trial.run_id, str(weights))
    assert main(["lesion", "--study", "damaged", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("ablate")]) == 1
    first, second = (f"resnet20 seed {s} (run {t.run_id}): weights.pt" for s, t in enumerate(trials))
    assert first + ": unreadable" in err
    assert second + ": weights of another net" in err
    assert not any(t.lesion for t in load_study_records("damaged", uri).trials)  # nothing was written


# -- end to end: weights kept by a real study, then lesioned -------------------------------------------


TINY = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_train": 320, "synthetic_test": 64,
             "val_size": 0},
    "model": {"n": 1, "base_width": 8},
    "trainer": {"iterations": 20, "batch_size": 32, "eval_every": 10, "device": "cpu"},
}


@pytest.mark.slow
def test_finished_trials_keep_weights_that_ablate_lesion_sweeps(tmp_path, ray_session, capsys):
    from ablate.search import run_study
    from ablate.study import load_study

    path = tmp_path / "kept.yaml"
    path.write_text(yaml.safe_dump({"name": "kept", "question": "Kept?", **TINY, "seeds": [0, 1],
                                    "space": {"model.shortcut": ["none", "A"]}, "max_concurrent": 2}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_study(load_study(path), tracking_uri=uri, storage_path=tmp_path / "ray") == 0
    records = load_study_records("kept", uri)
    client = MlflowClient(uri)
    for trial in records.trials:
        local = Path(client.download_artifacts(trial.run_id, layout.ARTIFACT_WEIGHTS, str(tmp_path / trial.run_id)))
        state = torch.load(local, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        config = TrainConfig.model_validate_json(
            Path(client.download_artifacts(trial.run_id, layout.ARTIFACT_CONFIG, str(tmp_path / trial.run_id)))
            .read_text())
        model = load_weights(local, build_model(config.model, in_channels=3, num_classes=10))
        splits = load_dataset(config.data)
        test = DeviceData(splits.test_x, splits.test_y, mean=splits.mean, std=splits.std, device="cpu", pad=0)
        bf16 = speed_defaults(torch.device("cpu"))  # the trainer's autocast here
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        error = measure_error(model, test, batch_size=config.trainer.eval_batch_size, autocast=autocast)
        assert error == trial.value("test_error")
    capsys.readouterr()

    assert main(["lesion", "--study", "kept", "--tracking-uri", uri, "--k", "2", "--draws", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count(" deleted ") == 4 and "plain8-w8 seed 1: base" in out
    for trial in load_study_records("kept", uri).trials:
        lesion = trial.lesion
        assert lesion.base_error == trial.value("test_error") == trial.value(layout.METRIC_LESION_BASE)
        assert lesion.unit_names == ("stages.0.0", "stages.1.0", "stages.2.0") and lesion.stages == (1, 2, 3)
        assert lesion.transitions == (False, True, True)
        plain = trial.params["model.shortcut"] == "none"
        assert [e is None for e in lesion.single] == ([False, True, True] if plain else [False] * 3)
        assert lesion.k == ((1,) if plain else (1, 2)) and all(len(row) == 2 for row in lesion.draws)
        singles = [e - lesion.base_error for e in lesion.single if e is not None]
        assert trial.value(layout.METRIC_LESION_MEAN) == pytest.approx(sum(singles) / len(singles))
        assert math.isfinite(trial.value(layout.METRIC_LESION_MAX))
        assert json.loads(json.dumps(lesion.draws)) == [list(row) for row in lesion.draws]
