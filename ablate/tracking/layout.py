"""How a study is laid out in MLflow: the one contract between the writer and the readers.

- One MLflow **experiment per study**, named after the study (``study.name``), tagged so that
  ``mlflow ui`` shows it as a model-training experiment with the study's columns (:mod:`.ui`).
- Each invocation of ``ablate run`` is a **parent run** (tag ``ablate.role = study``).
- Each trial is a **child run** nested under it (``mlflow.parentRunId``; ``ablate.role = trial``).

Child runs hold:
- params: the fields of the trial's resolved :class:`~ablate.config.TrainConfig` that mean something
  for it, flattened (``model.n``, ``trainer.lr``, ``seed``, ...; no ``None`` values, no
  ``data.synthetic_*`` on real data), plus :data:`PARAM_MODEL_NAME`, :data:`PARAM_DEPTH`,
  :data:`PARAM_MODEL_PARAMS`, :data:`PARAM_MODEL_MACS`, :data:`PARAM_TRAIN_FLOPS` and the short copies :data:`SHORT_PARAMS`
  (``block``, ``shortcut``, ``warmup``) that the runs table shows side by side;
- metrics at every evaluation point, ``step`` = training iteration: the trainer's numbers,
  :data:`ablate.metrics.EVAL_METRICS` and the ``grad_norm/<part>`` family (:mod:`ablate.metrics`);
  a run's final values are its latest ones;
- artifacts ``layer_responses.json`` (``{"names": [...], "std": [...]}``, network order),
  ``config.json`` (the resolved config, every field) and, for a finished trial, ``weights.pt`` (its final
  weights: a state dict of tensors, loadable with ``torch.load(weights_only=True)`` into
  ``build_model(config.model)``); after ``ablate lesion``, ``lesion.json``::

      {"base_error": float,
       "units": [{"name": "stages.0.0", "stage": 1, "transition": false, "error": float | null}, ...],
       "k": [1, ..., K],
       "draws": [[error of each random draw of k deleted units], ...]}   # one list per k

  (units in network order; ``error`` null where the unit cannot be deleted: a plain unit that changes
  shape; ``transition``: the first unit of a stage after the first) and the metrics
  :data:`METRIC_LESION_BASE`, :data:`METRIC_LESION_MEAN`, :data:`METRIC_LESION_MAX`;
- tags: :data:`TAG_STUDY`, :data:`TAG_ROLE`, :data:`TAG_STATUS`, :data:`TAG_GROUP`,
  :data:`TAG_LABEL`, :data:`TAG_TRIAL`, plus the git commit and library versions; in a study that
  compares design spaces, :data:`TAG_DESIGN_SPACE` (the space's name, or :data:`NOISE_SPACE`).

Parent runs hold the resolved study file as artifact ``study.yaml`` and its outline as params
(``study.file``, ``search.method``, ``seeds``, ``trials``, ``space.<axis key>``; the ``--set``
overrides under ``set.<key>``), the study's question and metric
as tags, the user, source and git commit, and a description (MLflow's run note): the question, and
once ``ablate report`` has run, its answer, headline metrics (:data:`BEST_PREFIX`,
:data:`MEAN_PREFIX`) and the report (``report/``).

Records written before these names (``final/<metric>`` metrics, a ``model.depth`` param) still read:
see :data:`LEGACY_FINAL_PREFIX` and :data:`LEGACY_PARAMS`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ablate.metrics import Status
from ablate.paths import project_root

# tags
TAG_STUDY = "ablate.study"  # study name, on parent and child runs
TAG_ROLE = "ablate.role"  # "study" (parent) | "trial" (child)
TAG_STATUS = "ablate.status"  # an ablate.metrics.Status: child, any; parent: running | finished | interrupted | failed
# MLflow's own run status for each ablate.status a run ends with (a diverged or early-stopped trial
# ran as the study planned; an interrupted one continues on --resume): the writer ends runs with it, the
# store closes abandoned runs with it, readers may rely on it.
MLFLOW_STATUS = {
    Status.FINISHED: "FINISHED",
    Status.DIVERGED: "FINISHED",
    Status.STOPPED: "FINISHED",  # child: stopped early by ASHA
    Status.INTERRUPTED: "KILLED",
    Status.FAILED: "FAILED",
}
TAG_GROUP = "ablate.group"  # child: key of the configuration without its seed (replicates share it)
TAG_LABEL = "ablate.label"  # child: short human label of the configuration, e.g. "resnet56-B"
TAG_TRIAL = "ablate.trial_id"  # child: Ray Tune trial id; member k of a fused trial: "<trial id>.<k>"
TAG_QUESTION = "ablate.question"  # parent: the study's question
TAG_METRIC = "ablate.metric"  # parent: the metric the study reports, e.g. "test_error"
TAG_MODE = "ablate.mode"  # parent: "min" | "max"
TAG_PARENT = "mlflow.parentRunId"  # set by MLflow for nested runs
TAG_DRIVER = "ablate.driver"  # parent and child: "host:pid:start" of the process that last opened the run
TAG_DESIGN_SPACE = "ablate.design_space"  # child of a design-space study: its space's name, or NOISE_SPACE
NOISE_SPACE = "noise"  # TAG_DESIGN_SPACE of a noise-reference trial (one configuration, many seeds)

ROLE_STUDY = "study"
ROLE_TRIAL = "trial"

LEGACY_FINAL_PREFIX = "final/"  # older records repeated each last value as final/<metric>; readers skip them

# parent run metrics, logged by `ablate report` (error fractions, like the trials' metrics)
BEST_PREFIX = "best_mean_"  # best_mean_<metric>: the best configuration's mean over its seeds
MEAN_PREFIX = "mean_"  # mean_<metric>/<configuration label>: every configuration's mean (grid studies)

# artifacts
ARTIFACT_RESPONSES = "layer_responses.json"
ARTIFACT_CONFIG = "config.json"
ARTIFACT_WEIGHTS = "weights.pt"  # child of a finished trial: its final weights, a plain state dict (ablate.weights)
ARTIFACT_LESION = "lesion.json"  # child, after `ablate lesion`: the lesion sweep (module docstring)
ARTIFACT_STUDY = "study.yaml"
ARTIFACT_REPORT_DIR = "report"

# child run metrics logged by `ablate lesion` (test error fractions; step 0)
METRIC_LESION_BASE = "lesion/base_error"  # the net with nothing deleted, as evaluated by the sweep
METRIC_LESION_MEAN = "lesion/single_mean_increase"  # mean over deletable units of (error with it deleted - base)
METRIC_LESION_MAX = "lesion/single_max_increase"  # the largest such increase

# child run params added beside the flattened config
PARAM_MODEL_NAME = "model.name"
PARAM_DEPTH = "depth"  # weighted layers
PARAM_MODEL_PARAMS = "model.params"
PARAM_MODEL_MACS = "model.macs"
PARAM_TRAIN_FLOPS = "model.train_flops"  # the trial's training FLOPs, as `ablate plan` counts them
SHORT_PARAMS = {  # short name -> the config key it copies, for the runs table's columns
    "block": "model.block",
    "shortcut": "model.shortcut",
    "warmup": "trainer.warmup.policy",
}
ADDED_PARAMS = frozenset(
    {PARAM_MODEL_NAME, PARAM_DEPTH, PARAM_MODEL_PARAMS, PARAM_MODEL_MACS, PARAM_TRAIN_FLOPS, *SHORT_PARAMS}
)
LEGACY_PARAMS = {"model.depth": PARAM_DEPTH}  # older name -> current name


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite ``mlflow.db`` at the project root, as an absolute path.

    Absolute, so that Ray workers (which run in other directories) and ``mlflow ui`` started at the
    project root agree on one file.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH[?options]`` URI; None for other stores and in-memory SQLite."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri.removeprefix(prefix).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)
