"""The ResNet-1202-vs-110 style diagnosis (ablate.report.deeper): gap, lesion curves and gradients against noise."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri

from ablate.report import make_report
from ablate.report.aggregate import summarize
from ablate.report.deeper import single_increase, why_applies, why_deeper
from ablate.report.diagnose import Tolerance, diagnose
from ablate.report.evidence import gradient_verdicts
from ablate.tracking.reader import LesionRecord, load_study_records

TOLERANCE = Tolerance()
GRADS = (("stem", 2.0), ("stage1", 0.9), ("stage2", 0.95), ("head", 1.0))


def _deep_study() -> list[FakeTrial]:
    """resnet20 -> resnet56: the same training error, test error 3 points higher (overfitting); healthy gradients."""
    trials = []
    for n, train, test in ((3, [0.010, 0.012, 0.011], [0.100, 0.102, 0.098]),
                           (9, [0.010, 0.011, 0.012], [0.130, 0.128, 0.132])):
        for seed, (tr, te) in enumerate(zip(train, test)):
            stage1 = 0.9 + 0.05 * (seed - 1)
            grads = tuple((part, stage1 if part == "stage1" else value) for part, value in GRADS)
            trials.append(FakeTrial(n=n, seed=seed, train_error=tr, test_error=te, grad_norms=grads))
    return trials


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("deeper")
    uri = new_tracking_uri(root)
    client = MlflowClient(uri)
    log_study(client, "deep", [Invocation(_deep_study())], artifact_root=root / "artifacts", metric="test_error")
    plain = [FakeTrial(n=3, shortcut="none"), FakeTrial(n=9, shortcut="none")]
    log_study(client, "plainpair", [Invocation(plain)], artifact_root=root / "artifacts", metric="test_error")
    return {"uri": uri, "root": root}


def _lesion(base: float, increase: float, k_errors: dict[int, float], seed: int) -> LesionRecord:
    """Six units (one transition, which cannot be deleted), each adding ``increase`` (+ a seed wobble)."""
    wobble = 0.001 * (seed - 1)
    single = tuple(None if i == 3 else base + increase + wobble for i in range(6))
    return LesionRecord(
        base_error=base, unit_names=tuple(f"stage{1 + i // 3}.{i % 3}" for i in range(6)),
        stages=(1, 1, 1, 2, 2, 2), transitions=(False, False, False, True, False, False), single=single,
        k=tuple(k_errors), draws=tuple((e + wobble, e - wobble) for e in k_errors.values()),
    )


def _diagnoses(store, *, lesions: dict[str, list[LesionRecord]] | None = None):
    records = load_study_records("deep", store["uri"])
    if lesions:
        trials = tuple(replace(t, lesion=lesions[t.label][t.seed]) if t.label in lesions else t for t in records.trials)
        records = replace(records, trials=trials)
    summaries = summarize(records)
    findings = diagnose(summaries, metric="test_error", tolerance=TOLERANCE)
    gradients = gradient_verdicts(findings, summaries, tolerance=TOLERANCE)
    assert why_applies(summaries, findings, "test_error")
    return why_deeper(findings, summaries, gradients, tolerance=TOLERANCE, study="deep")


def test_it_applies_to_residual_depth_pairs_on_test_error_only(store):
    deep = summarize(load_study_records("deep", store["uri"]))
    findings = diagnose(deep, metric="test_error", tolerance=TOLERANCE)
    assert why_applies(deep, findings, "test_error") and not why_applies(deep, findings, "train_error")
    plain = summarize(load_study_records("plainpair", store["uri"]))
    assert not why_applies(plain, diagnose(plain, metric="test_error", tolerance=TOLERANCE), "test_error")


def test_without_lesion_records_the_gap_alone_tells_the_nets_apart(store):
    (diagnosis,) = _diagnoses(store)
    assert diagnosis.labels == ("resnet20", "resnet56")
    gap, lesion, gradients = diagnosis.measured
    assert gap.distinguishes is True and "gap: final test error - training error 8.90 ± 0.17 pp → 11.90 ± 0.17 pp" in gap.text
    assert "clearly higher for resnet56" in gap.text
    assert lesion.distinguishes is None
    assert lesion.text == "lesion curves: no lesion records for resnet20 and resnet56: run `ablate lesion --study deep`"
    assert gradients.distinguishes is False and "do not vanish" in gradients.text
    assert diagnosis.distinguishing == ("train/test gap",)
    assert diagnosis.summary() == (
        "What tells resnet20 and resnet56 apart beyond the seed spread: the train/test gap; not the gradients; "
        "not judged: the lesion curves."
    )


def test_lesion_records_show_the_deeper_net_depends_less_on_each_unit(store):
    shallow = [_lesion(0.10, 0.05, {1: 0.15, 2: 0.20, 4: 0.30}, seed) for seed in range(3)]
    deep = [_lesion(0.13, 0.01, {1: 0.14, 2: 0.15, 4: 0.17, 8: 0.25}, seed) for seed in range(3)]
    assert single_increase(shallow[1]) == pytest.approx(0.05)  # the transition (None) is left out
    (diagnosis,) = _diagnoses(store, lesions={"resnet20": shallow, "resnet56": deep})
    lesion = diagnosis.measured[1]
    assert lesion.distinguishes is True
    assert "mean test-error increase per deleted unit 5.00 ± 0.10 pp → 1.00 ± 0.10 pp" in lesion.text
    assert "clearly lower for resnet56" in lesion.text
    assert "test error with 4 random units deleted 30.00 ± 0.00 % → 17.00 ± 0.00 %" in lesion.text  # the largest k both have
    assert diagnosis.distinguishing == ("train/test gap", "lesion curves")


def test_lesion_records_on_one_side_only_are_named(store):
    shallow = [_lesion(0.10, 0.05, {1: 0.15}, seed) for seed in range(3)]
    (diagnosis,) = _diagnoses(store, lesions={"resnet20": shallow})
    assert diagnosis.measured[1].text.startswith("lesion curves: no lesion records for resnet56: run `ablate lesion")


def test_the_report_states_the_diagnosis_in_its_answer_and_section(store):
    report = make_report("deep", tracking_uri=store["uri"], out_dir=store["root"] / "reports")
    assert "What tells resnet20 and resnet56 apart beyond the seed spread: the train/test gap (" in report.answer
    assert "not judged: the lesion curves (no lesion records for resnet20 and resnet56: run `ablate lesion --study " \
           "deep`)" in report.answer
    markdown = (report.path / "report.md").read_text()
    section = markdown.split("## Why the deeper residual net tests differently\n")[1].split("\n## ")[0]
    assert "- Train/test gap: final test error - training error 8.90 ± 0.17 pp → 11.90 ± 0.17 pp" in section
    assert "- Lesion curves: no lesion records" in section and "- Gradients: resnet56's early-stage" in section
    (why,) = report.data["why_deeper"]
    assert why["distinguishing"] == ["train/test gap"]
    assert [m["distinguishes"] for m in why["measured"]] == [True, None, False]
