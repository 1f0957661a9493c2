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
