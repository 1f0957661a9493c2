"""A trained net's final weights as a file of their own: ``weights.pt``, a plain state dict of tensors.

Kept for every finished trial (an artifact of its MLflow run, :data:`ablate.tracking.layout.ARTIFACT_WEIGHTS`),
so that analyses of trained nets (``ablate lesion``) run later without retraining. The net is rebuilt from
the run's ``config.json`` (``build_model(config.model, ...)``), then :func:`load_weights` fills it.

Operation order: the trainer writes ``checkpoint.pt`` before its last report (:data:`ablate.trainer.CHECKPOINT_FILE`:
model, optimiser, position, RNG states) -> :func:`weights_from_checkpoint` reads its ``"model"`` entry as data
-> :func:`save_weights` writes that state dict alone (no optimiser momentum: about half the checkpoint;
4 bytes per parameter plus the BN running statistics) -> :func:`load_weights` reads it back with
``torch.load(weights_only=True)``, so a crafted file cannot run code; anything else is one
:class:`WeightsError` naming the file.

Example::

    >>> save_weights(weights_from_checkpoint("run/checkpoint.pt"), "weights.pt")   # doctest: +SKIP
    >>> model = build_model(config.model, in_channels=1, num_classes=10)           # doctest: +SKIP
    >>> load_weights("weights.pt", model)                                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ablate.errors import UserError

__all__ = ["CHECKPOINT_MODEL", "WeightsError", "load_weights", "read_state", "save_weights", "weights_from_checkpoint"]

CHECKPOINT_MODEL = "model"  # the entry of the trainer's checkpoint.pt that holds model.state_dict()


class WeightsError(UserError):
    """A weights file that cannot be used: missing, unreadable, not a state dict of tensors, or of another net."""


def read_state(path: str | os.PathLike) -> dict:
    """The contents of a PyTorch file read as data only (``weights_only``), on the CPU; WeightsError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  read as data, a damaged file raises anything from EOFError to UnpicklingError
        raise WeightsError(f"{path}: unreadable: truncated, empty, not a PyTorch file, or not plain tensors "
                           f"({_first_line(err)})") from None


def weights_from_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's state dict held by a trainer's ``checkpoint.pt``."""
    state = read_state(path)
    if not isinstance(state, dict) or not isinstance(state.get(CHECKPOINT_MODEL), dict):
        raise WeightsError(f"{path}: not a checkpoint written by ablate (no {CHECKPOINT_MODEL!r} entry)")
    return state[CHECKPOINT_MODEL]


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write ``state`` (name -> tensor) to ``path`` as a plain dict of CPU tensors; returns the path."""
    path = Path(path)
    torch.save({name: tensor.detach().cpu() for name, tensor in state.items()}, path)
    return path


def load_weights(path: str | os.PathLike, model: torch.nn.Module) -> torch.nn.Module:
    """Fill ``model`` with the weights in ``path`` (every entry, exactly: ``strict``); returns ``model``."""
    state = read_state(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a weights file (a dict of tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsError(f"{path}: weights of another net: {_first_line(err)}") from None
    return model


def _first_line(err: BaseException) -> str:
    """The error's first line that says something (not a heading ending in ``:``), at most 160 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(err).__name__)
    return text if len(text) <= 160 else text[:157] + "..."
