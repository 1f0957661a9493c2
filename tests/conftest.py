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
def saved_training_rate(tmp_path_factory):
    """The estimates of `ablate plan` / `ablate run` read a known rate for this CPU from a file of the session's
    own (no calibration in every test, nothing written to ~/.cache): 10 GFLOP/s."""
    import torch

    from ablate import estimate
    from ablate.bench import device_name

    path = tmp_path_factory.mktemp("rates") / "throughput.json"
    patch = pytest.MonkeyPatch()
    patch.setattr(estimate, "rate_file", lambda: path)
    rate = estimate.Rate(1e10, device_name(torch.device("cpu")), "test", "2026-11-22 00:00")
    estimate.save_rate(rate)
    yield rate
    patch.undo()
