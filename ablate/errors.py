"""The one base class of errors a user can act on.

Anything raised as a :class:`UserError` (or a subclass: ``ConfigError``, ``StudyError``, ``DatasetError``,
``UnknownStudyError``, ...) is the user's to fix: the CLI prints its message alone and exits with status 2.
Every other exception is a bug and keeps its traceback. This module imports nothing, so every layer can
use it without depending on another.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input a user can fix (a file, a key, a value, a missing data set); the message says where and what."""
