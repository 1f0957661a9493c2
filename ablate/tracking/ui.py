"""How a study looks in ``mlflow ui``: the experiment's tags and the link that opens its runs.

MLflow 3 opens every experiment in its GenAI view (traces, an "Overview" page) unless the page's
address says ``workflowType=machine_learning``: the sidebar's "GenAI / Model training" switch is a
setting of the browser, not of the experiment (MLflow 3.17 reads ``mlflow.experimentKind`` only when
that switch is disabled; it is set anyway, as the experiment's own statement of its kind). So the
writer tags each study's experiment, and ``ablate run`` / ``ablate report`` print :func:`runs_url`:

- ``mlflow.experimentKind = custom_model_development``: a model-training experiment;
- ``mlflow.sharedViewState.ablate``: a saved view of the runs table (MLflow's "share view" record,
  JSON), opened by ``viewStateShareKey=ablate`` in the address: the study's compared keys, seed,
  metrics and status as the table's columns, sorted by the study's metric (a sorted table lists
  every trial instead of nesting them, collapsed, under their parent run), and the chart view
  filtered to the error curves;
- ``mlflow.experiment.primaryMetric.name`` / ``.greaterIsBetter``: the study's metric;
- ``mlflow.note.content``: the experiment's description, the study's question.

Example::

    >>> runs_url("3")
    'http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=ablate'
    >>> runs_url("3", "http://tracking:5000")[:38]
    'http://tracking:5000/#/experiments/3/r'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlflow.utils.mlflow_tags import (
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER,
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME,
    MLFLOW_RUN_NOTE,
)

from ablate.tracking import layout

__all__ = ["UI_ADDRESS", "VIEW_KEY", "columns", "experiment_tags", "runs_url", "serve_command", "where_to_look"]

UI_ADDRESS = "http://127.0.0.1:5000"  # where a plain `mlflow ui` serves
VIEW_KEY = "ablate"  # the saved view's key: experiment tag mlflow.sharedViewState.<key>
TAG_VIEW = "mlflow.sharedViewState." + VIEW_KEY
TAG_KIND = "mlflow.experimentKind"
KIND_TRAINING = "custom_model_development"  # MLflow's "Model training" kind
_SHORT_FOR = {  # config key (or section) -> the short param that shows it
    "model.n": layout.PARAM_DEPTH,
    **{key: short for short, key in layout.SHORT_PARAMS.items()},
    "trainer.warmup": "warmup",
}


def runs_url(experiment_id: str, tracking_uri: str | None = None) -> str:
    """The study's runs table in the model-training view, with the study's saved columns.

    On a tracking server (an ``http(s)://`` URI) the server's own address; else where ``mlflow ui``
    serves by default.
    """
    served = tracking_uri is not None and tracking_uri.startswith(("http://", "https://"))
    address = tracking_uri if served else UI_ADDRESS
    return (
        f"{address.rstrip('/')}/#/experiments/{experiment_id}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    )


def serve_command(tracking_uri: str) -> str | None:
    """The ``mlflow ui`` command that serves a SQLite store: plain ``mlflow ui`` when the store is
    ./mlflow.db (its default); None for a tracking server, which serves itself."""
    database = layout.sqlite_path(tracking_uri)
    if database is None:
        return None
    if database.resolve() == (Path.cwd() / "mlflow.db").resolve():
        return "mlflow ui"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def where_to_look(experiment_id: str, tracking_uri: str) -> str:
    """One line for the terminal: the runs' link, and the command that serves it when one is needed."""
    command = serve_command(tracking_uri)
    served = f" (after `{command}`)" if command else ""
    return f"runs in MLflow: {runs_url(experiment_id, tracking_uri)}{served}"


def columns(compared: Iterable[str], *, metric: str) -> list[str]:
    """The runs table's columns, as MLflow names them: compared keys (short names where there is one),
    seed, the study's metric with training and test error, and the trial's status."""
    params = list(dict.fromkeys([*(_SHORT_FOR.get(key, key) for key in compared), "seed"]))
    metrics = list(dict.fromkeys([metric, "train_error", "test_error"]))
    return [
        *(f"params.`{key}`" for key in params),
        *(f"metrics.`{key}`" for key in metrics),
        f"tags.`{layout.TAG_STATUS}`",
    ]


def experiment_tags(*, question: str, compared: Iterable[str], metric: str, mode: str) -> dict[str, str]:
    """The tags above for one study's experiment (set again at every invocation: the study may have changed)."""
    view = {
        "searchFilter": "",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": columns(compared, metric=metric),
        "chartsSearchFilter": "error",  # the chart view opens on the error curves (clear it for lr, grad_norm/*)
    }
    return {
        TAG_KIND: KIND_TRAINING,
        TAG_VIEW: json.dumps(view),
        MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME: metric,
        MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER: str(mode == "max").lower(),
        MLFLOW_RUN_NOTE: question,
    }
