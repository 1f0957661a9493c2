"""Fixtures the tests share: one local Ray instance for the session, the clock rate of `ablate plan`, Ray held off."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole test session (starting Ray takes seconds); shut down at the end.

    ``ablate.search.run_study`` uses the Ray already running in the process, so tests share this one.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def calibrated_rate():
    """The estimates of `ablate plan` / `ablate run` in this process assume a known rate for this CPU instead of
    calibrating on every study (tests/test_estimate.py calibrates for real): 10 GFLOP/s."""
    import torch

    from ablate.perf import estimate
    from ablate.device import device_name

    patch = pytest.MonkeyPatch()
    rate = estimate.Rate(1e10, device_name(torch.device("cpu")), "test", "2026-11-22 00:00")
    patch.setattr(estimate, "_calibrate", lambda device, config=None: rate)
    yield rate
    patch.undo()


@pytest.fixture
def no_ray(monkeypatch):
    """Ray as if not running in this process, and any attempt to start or join one recorded, not made."""
    from ablate.search import runner

    calls = []

    def init(**kwargs):
        from ray._private import ray_constants

        calls.append(kwargs | {"loopback": not ray_constants.ENABLE_RAY_CLUSTER})
        raise RuntimeError("stop here: Ray was asked to start")

    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runner.ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls
