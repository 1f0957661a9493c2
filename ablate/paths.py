"""Where the project lives on disk: the root that default outputs (``mlflow.db``, ``ray_results/``) and
shared inputs (``search_spaces/``) are found relative to. Imports nothing of the project, so any layer
may use it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["project_root"]


def project_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding ``pyproject.toml`` or ``.git``; else cwd."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / "pyproject.toml").exists() or (directory / ".git").exists():
            return directory
    return here
