"""Turning a study into Ray Tune trials: scheduling, Optuna samplers, resources, resume, progress.

- :mod:`~ablate.search.runner`: :func:`run_study`, the entry point of ``ablate run``;
- :mod:`~ablate.search.trainable`: the thin adapter Ray Tune calls, around :func:`ablate.trainer.train`;
- :mod:`~ablate.search.sampling`: Optuna-sampled studies (TPE, random), replicates and constraints;
- :mod:`~ablate.search.callbacks`: the driver-side MLflow recorder and the progress line.

Example::

    >>> from ablate.search import run_study
    >>> from ablate.study import load_study
    >>> run_study(load_study("studies/quickstart.yaml"), tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablate.search.runner import run_study

__all__ = ["run_study"]


def __getattr__(name: str) -> Any:
    """``run_study`` on first use: every Ray worker imports this package for the trainable, and the
    driver's side (MLflow, Optuna, the callbacks) would add seconds to each trial's start."""
    if name == "run_study":
        from ablate.search.runner import run_study

        return run_study
    raise AttributeError(f"module 'ablate.search' has no attribute {name!r}")
