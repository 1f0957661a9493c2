"""A run's checkpoint: where it is (:class:`Position`), written and read back as data only.

One folder per run holds ``checkpoint.pt`` (model, optimiser, position, warm-up state and the global
RNG states), written at every evaluation point before the report. The rule for a run that diverged,
plain or fused alike: its weights hold non-finite numbers, so no ``checkpoint.pt`` is written for
it; instead a small marker, ``diverged.json`` (the run's reports, ending with the ``diverged`` one),
is written beside the last good checkpoint. Resuming from a folder with the marker ends the run at
once as diverged with that history: a fused group resumes with such a member left ended.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ablate.errors import UserError
from ablate.metrics import STATUS, Status
from ablate.schedule import PaperWarmup

__all__ = ["CHECKPOINT_FILE", "DIVERGED_FILE", "CheckpointError", "Position", "load_checkpoint", "read_diverged",
           "save_checkpoint", "write_diverged"]

CHECKPOINT_FILE = "checkpoint.pt"
DIVERGED_FILE = "diverged.json"  # the marker of a run that diverged: its history, no weights
MAX_MARKER_BYTES = 64 * 2**20  # a marker holds a history of reports: far below this


class CheckpointError(UserError):
    """A ``checkpoint.pt`` that cannot be resumed from: missing, unreadable, not one of ours, or of another model."""


@dataclass
class Position:
    """Where a run is: enough, with the model and optimiser, to continue exactly."""

    iteration: int = 0
    epoch: int = 0  # full epochs completed
    batch_in_epoch: int = 0  # batches consumed of the current epoch
    epoch_rng: torch.Tensor | None = None  # data generator state at the start of the current epoch
    wall_time: float = 0.0  # seconds spent before the last checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(directory: Path, model, optimizer, pos: Position, warmup: PaperWarmup) -> None:
    """Write ``checkpoint.pt`` atomically (temp file + rename): a crash never leaves half a checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": dict(vars(pos)),
        "warmup": warmup.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = directory / f".{CHECKPOINT_FILE}.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / CHECKPOINT_FILE)


def load_checkpoint(directory: Path, model, optimizer) -> tuple[Position, PaperWarmup]:
    """Model, optimiser and global RNG states restored; the position and warm-up state returned.

    The file is read as data only (``weights_only``: tensors, numbers, strings, lists and dicts, which is
    all a checkpoint holds), so a crafted file cannot run code; anything but what :func:`save_checkpoint`
    wrote for this model is one :class:`CheckpointError`. The data generator is not touched here: the
    loop's batches replay the interrupted epoch from ``position.epoch_rng``, the one place that restores it.
    """
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file to resume from; run without --resume to start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: not a checkpoint written by ablate (it is not tensors and plain values; nothing "
            "in it was run)"
        ) from None
    except Exception as err:  # noqa: BLE001  read as data, a damaged file raises anything from EOFError to IndexError
        raise CheckpointError(f"{path}: unreadable: truncated, empty or not a PyTorch file ({_detail(err)})") from None
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        pos = Position(**state["position"])
        warmup = PaperWarmup.from_state(state["warmup"])
    except KeyError as err:
        raise CheckpointError(f"{path}: not a checkpoint written by ablate (no {err.args[0]!r} entry)") from None
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: written for another model or setting: {_detail(err)}") from None
    return pos, warmup


def write_diverged(directory: Path, history: list[dict[str, Any]]) -> None:
    """The marker of a diverged run (its reports, the last one ``diverged``), written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{DIVERGED_FILE}.tmp"
    tmp.write_text(json.dumps(history))  # NaN losses are written as NaN, which json reads back
    tmp.replace(directory / DIVERGED_FILE)


def read_diverged(directory: Path) -> list[dict[str, Any]] | None:
    """The history in ``directory``'s diverged marker, or None when the run there did not diverge."""
    path = directory / DIVERGED_FILE
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_MARKER_BYTES:
            raise ValueError(f"larger than {MAX_MARKER_BYTES} bytes")
        history = json.loads(path.read_text())
        if not (isinstance(history, list) and history and all(isinstance(m, dict) for m in history)
                and history[-1].get(STATUS) == Status.DIVERGED):
            raise ValueError("not a list of reports ending with a diverged one")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a diverged marker written by ablate ({_detail(err)})") from None
    return history


def _detail(err: BaseException) -> str:
    """The telling line of an error, at most 160 characters (torch's state-dict errors run to pages)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if not line.endswith(":")] or lines or [type(err).__name__]
    text = telling[0]
    return text if len(text) <= 160 else text[:157] + "..."
