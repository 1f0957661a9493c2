"""Reports from known MLflow records: aggregated tables, diagnosis verdicts, files, HTML, artifacts, partial marking."""

from __future__ import annotations

import json
import math
import re

import pytest
from mlflow import MlflowClient
from mlflow_records import FakeTrial, Invocation, log_study, new_tracking_uri, replicates

from ablate.report import UnknownStudyError, format_studies, list_studies, make_report
from ablate.report.answer import answer
from ablate.report.aggregate import ConfigSummary, Stat, coupled_keys, summarize
from ablate.report.diagnose import Difference, Tolerance, diagnose
from ablate.tracking.reader import load_study_records

TOLERANCE = Tolerance(min_points=0.5, min_spreads=2.0)
WARMUP = (("trainer.warmup.policy", "paper"),)  # set for n = 18 by the depth study's constraints, as in the paper
DEPTH_YAML = {
    "name": "depth",
    "constraints": {"set": [{"when": {"model.n": [18]}, "then": {"trainer.warmup.policy": "paper"}}]},
}


def _depth_study() -> list[FakeTrial]:
    """Degradation (plain 20->56), gain (resnet 20->56), overfitting (resnet 56->110), a block pair, a divergence."""
    return [
        *replicates(FakeTrial(n=3, shortcut="none"), train=[0.08, 0.09, 0.10], test=[0.10, 0.11, 0.12]),
        *replicates(FakeTrial(n=9, shortcut="none"), train=[0.14, 0.15, 0.16], test=[0.16, 0.17, 0.18]),
        *replicates(FakeTrial(n=3), train=[0.04, 0.05, 0.06], test=[0.080, 0.087, 0.094]),
        *replicates(FakeTrial(n=9), train=[0.019, 0.020, 0.021], test=[0.069, 0.070, 0.071]),
        *replicates(FakeTrial(n=18, overrides=WARMUP), train=[0.001, 0.002, 0.003], test=[0.078, 0.079, 0.080]),
        FakeTrial(n=18, seed=3, status="diverged", overrides=WARMUP),
        *replicates(FakeTrial(n=3, block="preact"), train=[0.04, 0.05, 0.06], test=[0.079, 0.086, 0.093]),
    ]


def _shortcut_study() -> list[FakeTrial]:
    """Depth 20: plain, A, B (A vs B inside the noise), C (A vs C outside it); depth 32: A and B only."""
    return [
        *replicates(FakeTrial(n=3, shortcut="none"), train=[0.10, 0.11, 0.12], test=[0.12, 0.13, 0.14]),
        *replicates(FakeTrial(n=3, shortcut="A"), train=[0.04, 0.05, 0.06], test=[0.07, 0.08, 0.09]),
        *replicates(FakeTrial(n=3, shortcut="B"), train=[0.04, 0.05, 0.06], test=[0.078, 0.088, 0.098]),
        *replicates(FakeTrial(n=3, shortcut="C"), train=[0.04, 0.05, 0.06], test=[0.050, 0.055, 0.060]),
        *replicates(FakeTrial(n=5, shortcut="A"), train=[0.03, 0.04], test=[0.070, 0.072]),
        *replicates(FakeTrial(n=5, shortcut="B"), train=[0.03, 0.04], test=[0.069, 0.071]),
    ]


def _live_study() -> list[FakeTrial]:
    """Still running: one seed of plain 20 and 56 (a degradation on one seed), resnet20 unfinished, a stopped trial."""
    return [
        FakeTrial(n=3, shortcut="none", train_error=0.10),
        FakeTrial(n=9, shortcut="none", train_error=0.20),
        FakeTrial(n=9, shortcut="none", seed=1, status="stopped"),
        FakeTrial(n=3, seed=0, status="running"),
        FakeTrial(n=3, seed=1, status="interrupted"),
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    uri = new_tracking_uri(root)
    client = MlflowClient(uri)
    artifacts = root / "artifacts"
    parents = {
        "depth": log_study(
            client, "depth", [Invocation(_depth_study(), study_yaml=DEPTH_YAML)], artifact_root=artifacts
        ),
        "shortcuts": log_study(client, "shortcuts", [Invocation(_shortcut_study())], artifact_root=artifacts),
        "live": log_study(client, "live", [Invocation(_live_study(), status="running")], artifact_root=artifacts),
        "empty": log_study(client, "empty", [Invocation([], status="running")], artifact_root=artifacts),
    }
    return {"uri": uri, "root": root, "parents": parents}


@pytest.fixture(scope="module")
def reports(store):
    """Each study's report, made once for the module."""
    out = store["root"] / "reports"
    return {name: make_report(name, tracking_uri=store["uri"], out_dir=out) for name in store["parents"]}


def _findings(store, name, *, with_study=True):
    records = load_study_records(name, store["uri"])
    study = records.study if with_study else None
    return {(f.kind, *f.labels): f for f in diagnose(summarize(records), tolerance=TOLERANCE, study=study)}


# -- statistics ---------------------------------------------------------------------------------


def test_difference_against_pooled_spread():
    a, b = Stat(0.10, 0.01, 3), Stat(0.12, 0.02, 5)
    diff = Difference(a, b)
    pooled = math.sqrt((2 * 0.01**2 + 4 * 0.02**2) / 6)
    assert diff.pooled_std == pytest.approx(pooled)
    assert diff.spreads == pytest.approx(0.02 / pooled)
    assert diff.direction(TOLERANCE) == "same"  # 2 pp but only 1.2 pooled std
    assert Difference(Stat(0.10, 0.002, 3), Stat(0.12, 0.002, 3)).direction(TOLERANCE) == "higher"  # 10 pooled std
    assert Difference(Stat(0.10, None, 1), Stat(0.107, None, 1)).spreads is None
    assert Difference(Stat(0.10, None, 1), Stat(0.107, None, 1)).direction(TOLERANCE) == "higher"  # size alone
    assert Difference(Stat(0.10, None, 1), Stat(0.104, None, 1)).direction(TOLERANCE) == "same"  # under 0.5 pp
    assert Difference(Stat(0.10, 0.0, 2), Stat(0.09, 0.0, 2)).spreads == -math.inf
    assert Difference(Stat(0.10, 0.0, 2), Stat(0.09, 0.0, 2)).direction(TOLERANCE) == "lower"


def test_replicates_aggregate_to_mean_std_count_without_diverged(store):
    ordered = summarize(load_study_records("depth", store["uri"]))
    summaries = {s.label: s for s in ordered}
    plain20 = summaries["plain20"].stats
    assert plain20["train_error"].mean == pytest.approx(0.09)
    assert plain20["train_error"].std == pytest.approx(0.01)
    assert plain20["test_error"].n == 3
    resnet110 = summaries["resnet110"]
    assert resnet110.count("diverged") == 1 and len(resnet110.excluded) == 1
    assert resnet110.stats["test_error"].n == 3
    assert resnet110.stats["test_error"].mean == pytest.approx(0.079)
    assert resnet110.stats["test_error"].std == pytest.approx(0.001)
    assert [s.label for s in ordered] == ["plain20", "plain56", "resnet20", "resnet56", "resnet110", "preact_resnet20"]


# -- diagnosis ----------------------------------------------------------------------------------


def test_depth_pairs_get_degradation_overfitting_and_gain(store):
    findings = _findings(store, "depth")
    assert findings[("depth", "plain20", "plain56")].verdict == "degradation"
    assert findings[("depth", "resnet20", "resnet56")].verdict == "gain"
    overfit = findings[("depth", "resnet56", "resnet110")]
    assert overfit.verdict == "overfitting"
    assert "2.00 ± 0.10 % → 0.20 ± 0.10 %" in overfit.text and "7.00 ± 0.10 % → 7.90 ± 0.10 %" in overfit.text
    assert not overfit.tentative
    assert "The study sets trainer.warmup.policy with it: none → paper." in overfit.text
    block = findings[("block", "resnet20", "preact_resnet20")]
    assert block.verdict == "no clear difference" and "under 0.5 pp" in block.text


def test_shortcut_differences_are_weighed_against_the_seed_spread(store):
    findings = _findings(store, "shortcuts")
    noise = findings[("shortcut", "resnet20", "resnet20-B")]
    assert noise.verdict == "no clear difference"
    assert "+0.80 pp, 0.8 pooled std, 3 vs 3 seeds; under 2 pooled std" in noise.text
    clear = findings[("shortcut", "resnet20", "resnet20-C")]
    assert clear.verdict == "clear difference"
    assert "-2.50 pp, 3.2 pooled std" in clear.text
    assert findings[("shortcut", "plain20", "resnet20")].verdict == "clear difference"
    assert findings[("shortcut", "resnet32", "resnet32-B")].verdict == "no clear difference"
    assert findings[("depth", "resnet20", "resnet32")].verdict == "no clear difference"  # 1.6 and 1.1 pooled std


def test_warmup_policies_are_compared_like_shortcuts():
    def summary(policy, errors):
        params = {"model.n": 18, "model.shortcut": "A", "trainer.warmup.policy": policy}
        return ConfigSummary(f"resnet110-{policy}", f"resnet110 warmup.policy={policy}", params, (),
                             {"train_error": Stat.of(errors)})  # fmt: skip

    none, paper, linear = summary("none", [0.30, 0.31, 0.32]), summary("paper", [0.20, 0.21, 0.22]), summary(
        "linear", [0.30, 0.32, 0.31]
    )
    findings = {frozenset(f.labels): f for f in diagnose([none, paper, linear], metric="train_error", tolerance=TOLERANCE)}
    assert {f.kind for f in findings.values()} == {"warm-up"} and len(findings) == 3
    clear = findings[frozenset((none.label, paper.label))]
    assert clear.verdict == "clear difference" and "warm-up paper has clearly lower training error" in clear.text
    assert findings[frozenset((none.label, linear.label))].verdict == "no clear difference"


def test_the_answer_names_the_best_warmup_policy_and_what_it_clearly_beats():
    def summary(policy, errors):
        params = {"model.n": 18, "model.shortcut": "A", "trainer.warmup.policy": policy}
        return ConfigSummary(f"resnet110-{policy}", f"resnet110 warmup.policy={policy}", params, (),
                             {"train_error": Stat.of(errors)})  # fmt: skip

    configs = [summary("none", [0.30, 0.31, 0.32]), summary("paper", [0.20, 0.21, 0.22]),
               summary("linear", [0.22, 0.26, 0.18])]
    findings = diagnose(configs, metric="train_error", tolerance=TOLERANCE)
    text = answer(configs, findings, metric="train_error", mode="min", tolerance=TOLERANCE)
    assert text.startswith("Warm-up policies: best paper (training error 21.00 ± 1.00 %), clearly better than none;"
                           " not clearly better than linear;"), text
    one_seed = [summary("none", [0.30]), summary("paper", [0.20])]
    text = answer(one_seed, diagnose(one_seed, metric="train_error", tolerance=TOLERANCE), metric="train_error",
                  mode="min", tolerance=TOLERANCE)
    assert "best paper (training error 20.00 %), better than none" in text and "clearly" not in text, text


def test_a_deeper_net_that_tests_worse_and_trains_worse_within_noise_is_not_called_overfitting():
    def summary(n, train, test):
        params = {"model.n": n, "model.shortcut": "A", "depth": 6 * n + 2}
        return ConfigSummary(f"resnet{6 * n + 2}", f"resnet{6 * n + 2}", params, (),
                             {"train_error": Stat.of(train), "test_error": Stat.of(test)})

    shallow = summary(3, [0.23, 0.25, 0.28], [0.235, 0.245, 0.255])
    noisy = summary(9, [0.27, 0.29, 0.29], [0.265, 0.27, 0.27])  # train +3 pp at ~1.4 pooled std
    level = summary(9, [0.24, 0.25, 0.27], [0.265, 0.27, 0.27])  # train +0.3 pp: as low
    worse, = diagnose([shallow, noisy], metric="train_error", tolerance=TOLERANCE)
    assert worse.verdict == "tests worse" and "cannot be told apart" in worse.text
    overfit, = diagnose([shallow, level], metric="train_error", tolerance=TOLERANCE)
    assert overfit.verdict == "overfitting"
    same = summary(9, [0.24, 0.25, 0.27], [0.24, 0.245, 0.255])  # a study of test error asks: does it test worse?
    text = answer([shallow, same], diagnose([shallow, same], metric="test_error", tolerance=TOLERANCE),
                  metric="test_error", mode="min", tolerance=TOLERANCE)
    assert text.startswith("Deeper residual nets test worse: no (resnet20 → resnet56: test error 24.50"), text
    better = summary(9, [0.20, 0.21, 0.22], [0.20, 0.205, 0.21])  # a gain on both errors
    text = answer([shallow, better], diagnose([shallow, better], metric="train_error", tolerance=TOLERANCE),
                  metric="train_error", mode="min", tolerance=TOLERANCE)
    assert text.startswith("Deeper residual nets train and test better: yes (resnet20 → resnet56: training error"), text


def test_curves_of_a_study_without_depth_pairs_get_one_panel_per_compared_axis():
    from ablate.report.plots import _panels

    def summary(shortcut, activation, scale=1.0):
        params = {"model.n": 9, "model.shortcut": shortcut, "model.activation": activation,
                  "model.residual_scale": scale, "depth": 56}
        return ConfigSummary(f"{shortcut}-{activation}", f"{shortcut}-{activation}", params, (), {})

    identity = summary("B", "original")
    configs = [identity, summary("scaled", "original", 0.5), summary("gated", "original"),
               summary("B", "full_preact"), summary("B", "bn_after_add")]
    study = {"constraints": {"set": [{"when": {"model.shortcut": ["scaled"]}, "then": {"model.residual_scale": 0.5}}]}}
    along, panels = _panels(configs, study)
    assert along == ""
    assert [[s.label for s in panel] for panel in panels] == [
        ["B-original", "gated-original", "scaled-original"],  # shortcuts, residual_scale going with `scaled`
        ["B-bn_after_add", "B-full_preact", "B-original"],  # placements; the identity unit is in both
    ]
    depth_pairs = [summary("B", "original"), ConfigSummary("b20", "b20", {**identity.params, "model.n": 3}, (), {})]
    assert _panels(depth_pairs, None)[0] == "model.n"


def test_settings_the_study_ties_to_depth_do_not_split_a_family(store):
    assert coupled_keys(DEPTH_YAML, "model.n") == {"trainer.warmup.policy"}
    assert coupled_keys(DEPTH_YAML, "model.shortcut") == set() and coupled_keys(None, "model.n") == set()
    strict = _findings(store, "depth", with_study=False)  # warm-up differs: 110 is no longer in the family
    assert ("depth", "resnet56", "resnet110") not in strict and ("depth", "resnet20", "resnet56") in strict


# -- the report ---------------------------------------------------------------------------------


def test_report_writes_files_and_logs_them_to_the_parent_run(store, reports):
    report = reports["depth"]
    assert report.path == store["root"] / "reports" / "depth"
    names = {p.name for p in report.files}
    assert names == {"report.md", "report.html", "curves.png", "layer_responses.png"}
    for png in ("curves.png", "layer_responses.png"):
        assert (report.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report.path / "report.md").read_text()
    assert "| plain20 | 20 | 0.27M | 40.5M | 9.00 ± 1.00 | 12.00 ± 0.00 | 11.00 ± 1.00 | 3 |" in markdown
    assert "| resnet110 | 110 |" in markdown and "| 3 +1 diverged |" in markdown
    assert re.search(r"\| resnet110 \| 3 \| diverged \| [0-9a-f]{32} \|", markdown)
    assert "degradation" in markdown and "overfitting" in markdown
    assert "degradation" in report.summary and "PARTIAL" not in report.summary
    parent = store["parents"]["depth"][-1]
    assert report.logged_to == parent
    logged = {info.path for info in MlflowClient(store["uri"]).list_artifacts(parent, "report")}
    assert logged == {f"report/{name}" for name in names}


def test_html_report_is_self_contained(reports):
    report = reports["shortcuts"]
    page = report.html.read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<link" not in page and not re.search(r'(src|href)="https?:', page)  # nothing to fetch
    assert "<style>" in page and "<table>" in page


def test_shortcut_report_has_the_option_table_per_depth(reports):
    report = reports["shortcuts"]
    markdown = (report.path / "report.md").read_text()
    assert "| depth | plain | A | B | C |" in markdown
    assert "| 20 | 13.00 ± 1.00 | 8.00 ± 1.00 | 8.80 ± 1.00 | 5.50 ± 0.50 |" in markdown
    assert "| 32 | — | 7.10 ± 0.14 | 7.00 ± 0.14 | — |" in markdown


def test_running_study_is_marked_partial(reports):
    report = reports["live"]
    assert "[PARTIAL]" in report.summary
    markdown = (report.path / "report.md").read_text()
    assert "PARTIAL RESULTS" in markdown
    assert "| 2 (1 running, 1 interrupted) |" in markdown and "| 1 +1 stopped |" in markdown
    assert re.search(r"\| resnet20 \| 0 \| running \|", markdown)
    assert re.search(r"\| plain56 \| 1 \| stopped \|", markdown)
    degradation = next(f for f in report.findings if f.labels == ("plain20", "plain56"))
    assert degradation.verdict == "degradation" and degradation.tentative
    assert "Tentative: one seed" in markdown


def test_study_without_trials_yet(reports):
    report = reports["empty"]
    assert {p.name for p in report.files} == {"report.md", "report.html"}
    assert "No trial has been recorded yet." in (report.path / "report.md").read_text()
    assert "[PARTIAL]" in report.summary


def test_listing_and_unknown_study(store):
    table = format_studies(list_studies(store["uri"]))
    assert re.search(r"live\s+running\s+1\s+5 trials \(2 finished, 1 interrupted, 1 running, 1 stopped\)", table)
    assert re.search(r"depth\s+finished\s+1\s+19 trials \(18 finished, 1 diverged\)", table)
    with pytest.raises(UnknownStudyError, match="recorded studies: depth, empty, live, shortcuts"):
        make_report("shortcut", tracking_uri=store["uri"], out_dir=store["root"] / "reports")


# -- what a researcher reads: the answer, the parent run, the findings for scripts ---------------------


QUICK = [  # one seed each, as the quickstart: plain nets degrade at 32 layers, shortcuts fix it
    FakeTrial(n=1, shortcut="none", train_error=0.2210, test_error=0.200),
    FakeTrial(n=5, shortcut="none", train_error=0.2595, test_error=0.240),
    FakeTrial(n=1, train_error=0.2234, test_error=0.204),
    FakeTrial(n=5, train_error=0.2260, test_error=0.206),
]


@pytest.fixture(scope="module")
def quick(store):
    log_study(MlflowClient(store["uri"]), "quick", [Invocation(QUICK)], artifact_root=store["root"] / "artifacts",
              metric="train_error", question="Does a deeper plain net train worse, and do shortcuts help?")
    return make_report("quick", tracking_uri=store["uri"], out_dir=store["root"] / "reports")


def test_answer_says_yes_or_no_with_the_numbers_and_the_seeds(quick, reports):
    assert quick.answer == (
        "Deeper plain nets train worse: yes (plain8 → plain32: training error 22.10 % → 25.95 %, +3.85 pp); "
        "deeper residual nets train worse: no (resnet8 → resnet32: training error 22.34 % → 22.60 %, +0.26 pp). "
        "Shortcuts lower training error: yes at 32 layers (plain32 → resnet32: training error 25.95 % → 22.60 %, "
        "-3.35 pp), no at 8 layers (plain8 → resnet8: training error 22.10 % → 22.34 %, +0.24 pp); one seed per "
        "configuration, so the seed spread is unknown and every verdict is tentative."
    )
    assert "2 to 3 seeds per configuration" in reports["shortcuts"].answer
    assert "shortcut options differ: yes, in 2 of 4 pairs" in reports["shortcuts"].answer


def test_report_reads_as_one_document(quick, store):
    markdown = (quick.path / "report.md").read_text()
    headings = re.findall(r"^#+ (.*)$", markdown, flags=re.M)
    assert len(headings) == len(set(headings))  # one heading per topic
    assert headings[:4] == ["Study quick", "Answer", "Results", "Depth"]
    assert markdown.split("## Answer\n\n")[1].startswith(quick.answer)
    assert markdown.count("Deep Residual Learning for Image Recognition") == 1 and "He et al. 2015" in markdown
    assert f"Tracking store: {store['root'] / 'mlflow.db'}\n" in markdown and "sqlite:" not in markdown
    for sentence in re.split(r"(?<=\.) ", markdown.replace("\n", " ")):
        assert not ("clear" in sentence.lower() and "tentative" in sentence.lower()), sentence
    link = r"In MLflow: http://127.0.0.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning"
    assert re.search(link, markdown)


def test_parent_run_carries_the_question_the_answer_and_the_headline_numbers(quick, store):
    run = MlflowClient(store["uri"]).get_run(quick.logged_to)
    note = run.data.tags["mlflow.note.content"]
    question = "Does a deeper plain net train worse, and do shortcuts help?"
    assert note == f"**Question:** {question}\n\n**Answer:** {quick.answer}"
    assert run.data.metrics == pytest.approx({
        "best_mean_train_error": 0.2210,
        "mean_train_error/plain8": 0.2210, "mean_train_error/plain32": 0.2595,
        "mean_train_error/resnet8": 0.2234, "mean_train_error/resnet32": 0.2260,
    })


def test_report_json_gives_each_comparison_for_scripts(quick, store, capsys):
    from ablate.cli import main

    out = store["root"] / "json_reports"
    assert main(["report", "--study", "quick", "--tracking-uri", store["uri"], "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["answer"] == quick.answer and data["metric"] == "train_error"
    degradation = next(f for f in data["findings"] if f["a"]["label"] == "plain8" and f["b"]["label"] == "plain32")
    assert degradation == {
        "kind": "depth", "family": "plain",
        "a": {"label": "plain8", "depth": 8, "model.n": 1}, "b": {"label": "plain32", "depth": 32, "model.n": 5},
        "differing_keys": ["model.n"], "metric": "train_error", "difference_pp": pytest.approx(3.85),
        "pooled_std_pp": None, "seeds": [1, 1], "verdict": "degradation", "tentative": True,
        "text": degradation["text"],
    }
    shortcut = next(f for f in data["findings"] if f["a"]["label"] == "plain32" and f["b"]["label"] == "resnet32")
    assert (shortcut["differing_keys"], shortcut["a"]["model.shortcut"], shortcut["b"]["model.shortcut"]) == (
        ["model.shortcut"], "none", "A")
