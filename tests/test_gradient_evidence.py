"""The gradient and Fig. 7 evidence of a report (ablate.report.evidence): read from hand-made records only."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri, replicates

from ablate.report import make_report
from ablate.report.aggregate import summarize
from ablate.report.diagnose import FactorDifference, Tolerance, diagnose
from ablate.report.evidence import RATIO_FLOOR, gradient_verdicts, response_verdicts, trial_ratio
from ablate.tracking.reader import History, TrialRecord, load_study_records

TOLERANCE = Tolerance()


def _grads(stage1: float, head: float = 1.0) -> tuple[tuple[str, float], ...]:
    return (("stem", 2 * head), ("stage1", stage1), ("stage2", (stage1 + head) / 2), ("head", head))


def _pair(n: int, shortcut: str, train, test, stage1s, responses) -> list[FakeTrial]:
    """One configuration over len(train) seeds, with per-seed stage-1 gradient norms (head 1.0) and responses."""
    return [
        FakeTrial(n=n, shortcut=shortcut, seed=seed, train_error=tr, test_error=te, grad_norms=_grads(g),
                  responses=tuple(r * x for x in (1.0, 0.8, 0.6)))
        for seed, (tr, te, g, r) in enumerate(zip(train, test, stage1s, responses, strict=True))
    ]


def _vanishing() -> list[FakeTrial]:
    """plain20 -> plain56: degradation, stage-1 gradients 100x smaller; the residual nets respond half as strongly."""
    return [
        *_pair(3, "none", [0.08, 0.09, 0.10], [0.10, 0.11, 0.12], [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]),
        *_pair(9, "none", [0.14, 0.15, 0.16], [0.16, 0.17, 0.18], [0.010, 0.011, 0.009], [2.0, 2.1, 1.9]),
        *_pair(3, "A", [0.04, 0.05, 0.06], [0.080, 0.087, 0.094], [1.0, 1.1, 0.9], [1.0, 1.05, 0.95]),
        *_pair(9, "A", [0.019, 0.020, 0.021], [0.069, 0.070, 0.071], [1.0, 1.1, 0.9], [1.0, 1.05, 0.95]),
    ]


def _healthy() -> list[FakeTrial]:
    """plain20 -> plain56: degradation, but the stage-1/head ratio 0.9 ± 0.1 -> 0.8 ± 0.1; responses alike."""
    return [
        *_pair(3, "none", [0.08, 0.09, 0.10], [0.10, 0.11, 0.12], [0.9, 1.0, 0.8], [1.0, 1.2, 0.8]),
        *_pair(9, "none", [0.14, 0.15, 0.16], [0.16, 0.17, 0.18], [0.8, 0.9, 0.7], [1.0, 1.2, 0.8]),
        *_pair(3, "A", [0.04, 0.05, 0.06], [0.080, 0.087, 0.094], [0.9, 1.0, 0.8], [1.1, 0.9, 1.0]),
        *_pair(9, "A", [0.019, 0.020, 0.021], [0.069, 0.070, 0.071], [0.9, 1.0, 0.8], [1.1, 0.9, 1.0]),
    ]


def _older() -> list[FakeTrial]:
    """Records of a store from before grad_norm/<part> was logged."""
    return [
        *replicates(FakeTrial(n=3, shortcut="none"), train=[0.08, 0.09], test=[0.10, 0.11]),
        *replicates(FakeTrial(n=9, shortcut="none"), train=[0.14, 0.15], test=[0.16, 0.17]),
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradients")
    uri = new_tracking_uri(root)
    client = MlflowClient(uri)
    for name, trials in (("vanishing", _vanishing()), ("healthy", _healthy()), ("older", _older())):
        log_study(client, name, [Invocation(trials)], artifact_root=root / "artifacts", metric="train_error")
    return {"uri": uri, "root": root}


@pytest.fixture(scope="module")
def reports(store):
    return {name: make_report(name, tracking_uri=store["uri"], out_dir=store["root"] / "reports")
            for name in ("vanishing", "healthy", "older")}


def _trial(stage1: History | None, head: History | None) -> TrialRecord:
    history = {k: v for k, v in (("grad_norm/stage1", stage1), ("grad_norm/head", head)) if v is not None}
    return TrialRecord("r", None, "g", "g", 0, "finished", 0, {}, {}, {}, history, None)


def test_the_ratio_is_the_geometric_mean_over_the_first_half_of_the_run():
    steps = (100, 200, 300, 400)
    # quotients 0.1 and 0.4 in the first half (up to step 200), then 100: the second half does not count
    ratio = trial_ratio(_trial(History(steps, (0.2, 0.8, 100.0, 100.0)), History(steps, (2.0, 2.0, 1.0, 1.0))))
    assert ratio == pytest.approx(math.sqrt(0.1 * 0.4))


def test_a_zero_head_norm_gives_no_quotient_and_a_zero_stage1_norm_the_floor():
    steps = (100, 200)
    assert trial_ratio(_trial(History(steps, (1.0, 1.0)), History(steps, (0.0, 0.0)))) is None
    assert trial_ratio(_trial(History(steps, (0.0, 1.0)), History(steps, (1.0, 0.0)))) == pytest.approx(RATIO_FLOOR)
    assert trial_ratio(_trial(History(steps, (1.0, 1.0)), None)) is None


def test_factor_differences_follow_the_noise_rule_on_log10():
    assert FactorDifference((1.0, 1.1, 0.9), (0.010, 0.011, 0.009)).direction(TOLERANCE) == "lower"
    assert FactorDifference((1.0, 1.1, 0.9), (0.010, 0.011, 0.009)).factor == pytest.approx(0.01, rel=0.01)
    assert FactorDifference((0.9, 1.0, 0.8), (0.8, 0.9, 0.7)).direction(TOLERANCE) == "same"  # within the spread
    assert FactorDifference((1.0, 1.0), (1.05, 1.05)).direction(TOLERANCE) == "same"  # under the factor 1.1
    single = FactorDifference((1.0,), (0.01,))
    assert single.log.spreads is None and single.direction(TOLERANCE) == "lower"  # size alone: tentative


def test_vanishing_gradients_are_said_with_the_factor_beyond_the_spread(store, reports):
    records = load_study_records("vanishing", store["uri"])
    summaries = summarize(records)
    findings = diagnose(summaries, metric="train_error", tolerance=TOLERANCE)
    verdicts = {v.labels: v for v in gradient_verdicts(findings, summaries, tolerance=TOLERANCE)}
    plain = verdicts[("plain20", "plain56")]
    assert plain.verdict == "vanish" and plain.clear and not plain.tentative
    assert plain.difference.factor == pytest.approx(0.01, rel=0.01)
    assert verdicts[("resnet20", "resnet56")].verdict == "no vanishing"
    report = reports["vanishing"]
    assert ("plain56's early-stage gradients vanish relative to plain20's (stage-1/head gradient-norm ratio "
            "1.00 ± 0.10 → 0.0100 ± 0.0010, 100 times smaller, beyond the seed spread)") in report.answer
    depth = (report.path / "report.md").read_text().split("## Depth")[1].split("\n## ")[0]
    bullet = next(line for line in depth.splitlines() if line.startswith("- plain20 (depth 20) → plain56"))
    assert "degradation" in bullet and "Gradients (sec. 4.1): plain56's early-stage gradients vanish" in bullet
    assert "beyond the seed spread" in bullet


def test_healthy_gradients_do_not_vanish_within_the_spread(reports):
    report = reports["healthy"]
    assert ("plain56's early-stage gradients do not vanish relative to plain20's (stage-1/head gradient-norm ratio "
            "0.900 ± 0.10 → 0.800 ± 0.10, 1.13 times smaller, within the seed spread)") in report.answer
    record = next(e for e in report.data["evidence"] if e["kind"] == "gradients" and e["a"] == "plain20")
    assert record["verdict"] == "no vanishing" and record["beyond_spread"] is False


def test_the_fig7_sentence_appears_only_beyond_the_spread(store, reports):
    sentence = "responses of the residual net are smaller than the plain net's, as in Fig. 7"
    assert sentence in reports["vanishing"].answer and "at 56 layers" in reports["vanishing"].answer
    assert sentence not in reports["healthy"].answer and "Fig. 7" not in reports["healthy"].answer
    markdown = (reports["healthy"].path / "report.md").read_text()
    assert "plain56 → resnet56 (mean layer-response std" in markdown
    assert "the responses are not distinguishable" in markdown
    records = load_study_records("vanishing", store["uri"])
    summaries = summarize(records)
    findings = diagnose(summaries, metric="train_error", tolerance=TOLERANCE)
    verdicts = response_verdicts(findings, summaries, tolerance=TOLERANCE)
    assert {v.labels: v.verdict for v in verdicts} == {("plain20", "resnet20"): "smaller",
                                                       ("plain56", "resnet56"): "smaller"}


def test_the_report_draws_the_per_part_gradient_norms(reports):
    report = reports["vanishing"]
    png = report.path / "grad_norms.png"
    assert png in report.files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report.path / "report.md").read_text()
    assert "## Gradient norms" in markdown and "](grad_norms.png)" in markdown
    assert markdown.count("data:image/png;base64,") == 0
    assert (report.path / "report.html").read_text().count("data:image/png;base64,") == 3  # curves, grads, responses


def test_a_store_without_gradient_records_says_so(reports):
    report = reports["older"]
    markdown = (report.path / "report.md").read_text()
    assert "no trial of these depth pairs recorded grad_norm/stage1 and grad_norm/head" in markdown
    assert "No trial of the depth pairs recorded grad_norm/<part> histories" in markdown
    assert not (report.path / "grad_norms.png").exists()
    assert "gradients" not in report.answer
    assert json.loads(json.dumps(report.data))["evidence"][0]["verdict"] == "not enough data"


def test_the_report_reads_the_records_only(store):
    """No training, no model: the report's process never imports torch or the trainer."""
    script = (
        "import sys\n"
        "from ablate.report import make_report\n"
        f"report = make_report('vanishing', tracking_uri={store['uri']!r}, out_dir={str(store['root'] / 'again')!r})\n"
        "assert 'vanish relative to' in report.answer, report.answer\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'ablate.trainer'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_reader_reads_every_grad_norm_history(store):
    trial = load_study_records("vanishing", store["uri"]).trials[0]
    assert {k for k in trial.history if k.startswith("grad_norm/")} == {
        "grad_norm/stem", "grad_norm/stage1", "grad_norm/stage2", "grad_norm/head"}
    assert trial.history["grad_norm/stage1"].steps == trial.history["train_error"].steps == (100, 200, 300, 400)


def test_one_seed_per_net_is_tentative_and_never_beyond_the_spread(tmp_path):
    uri = new_tracking_uri(tmp_path)
    trials = [*_pair(3, "none", [0.08], [0.10], [1.0], [2.0]), *_pair(9, "none", [0.14], [0.16], [0.01], [2.0]),
              *_pair(3, "A", [0.05], [0.08], [1.0], [1.0]), *_pair(9, "A", [0.02], [0.07], [1.0], [1.0])]
    log_study(MlflowClient(uri), "single", [Invocation(trials)], artifact_root=tmp_path / "a", metric="train_error")
    report = make_report("single", tracking_uri=uri, out_dir=tmp_path / "reports")
    gradients = {(e["a"], e["b"]): e for e in report.data["evidence"] if e["kind"] == "gradients"}
    plain = gradients[("plain20", "plain56")]
    assert plain["verdict"] == "vanish" and plain["tentative"] and not plain["beyond_spread"]
    assert "100 times smaller, tentative: one seed" in report.answer
    assert "Fig. 7" not in report.answer  # responses 2x smaller, but with one seed not beyond any spread
