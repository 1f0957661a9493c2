"""Session-wide fixtures: one local Ray instance shared by every test that needs Ray."""

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
