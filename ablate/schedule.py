"""Learning rate as a function of the iteration: the main schedule and the warm-up policies.

Schedules are set in iterations (paper sec. 4.2: lr 0.1, /10 at 32k and 48k, stop at 64k), with
milestones stored as fractions of the run (0.5, 0.75), so the same recipe means the same thing for any
run length or data set size. Pure functions and one small state object; no torch.

    >>> from ablate.config import TrainerConfig
    >>> cfg = TrainerConfig()
    >>> [learning_rate(cfg, it, 64000) for it in (0, 31999, 32000, 48000)]
    [0.1, 0.1, 0.010000000000000002, 0.0010000000000000002]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ablate.config import TrainerConfig

__all__ = ["PaperWarmup", "learning_rate", "milestone_iterations"]


def milestone_iterations(cfg: TrainerConfig, total: int) -> list[int]:
    """Iterations at which the step schedule multiplies the lr by gamma (paper: [32000, 48000] of 64000)."""
    return [round(fraction * total) for fraction in cfg.milestones]


def _main_schedule(cfg: TrainerConfig, iteration: int, total: int) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = min(iteration, total) / total
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))
    passed = sum(iteration >= m for m in milestone_iterations(cfg, total))
    return cfg.lr * cfg.gamma**passed


def learning_rate(cfg: TrainerConfig, iteration: int, total: int, *, warming_up: bool = False) -> float:
    """The lr used for training step ``iteration`` (0-based) of a ``total``-iteration run.

    ``warming_up`` is the state of the paper's warm-up (see :class:`PaperWarmup`): while it holds, the
    lr is ``cfg.warmup.lr``. The linear policy scales the main schedule by (iteration+1)/k for the
    first k iterations. The main schedule counts iterations from the start of the run, warm-up included,
    as in the paper.
    """
    if warming_up:
        return cfg.warmup.lr
    lr = _main_schedule(cfg, iteration, total)
    if cfg.warmup.policy == "linear" and iteration < cfg.warmup.ramp_iterations:
        lr *= (iteration + 1) / cfg.warmup.ramp_iterations
    return lr


@dataclass
class PaperWarmup:
    """The paper's warm-up for ResNet-110 (sec. 4.2): lr 0.01 until the training error is below 80%.

    Every ``check_every`` iterations the trainer passes the mean training error of that window to
    :meth:`update`; warm-up ends (for good) when it is below ``until_train_error`` or when
    ``max_iterations`` have passed. After it ends the lr goes back to the main schedule (0.1): a common
    public reimplementation forgot that step.
    """

    active: bool
    ended_at: int | None = None

    @classmethod
    def start(cls, cfg: TrainerConfig) -> "PaperWarmup":
        return cls(active=cfg.warmup.policy == "paper")

    def needs_check(self, cfg: TrainerConfig, iterations_done: int) -> bool:
        """True when ``iterations_done`` closes a check window while warm-up is active."""
        return self.active and iterations_done % cfg.warmup.check_every == 0

    def update(self, cfg: TrainerConfig, iterations_done: int, window_train_error: float | None) -> None:
        """End warm-up if the window's training error is low enough or the cap is reached."""
        if not self.active:
            return
        low_enough = window_train_error is not None and window_train_error < cfg.warmup.until_train_error
        if low_enough or iterations_done >= cfg.warmup.max_iterations:
            self.active = False
            self.ended_at = iterations_done

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "PaperWarmup":
        return cls(**state)
