"""The shared trainer: one training run, ``train(config, report)``.

Every trial of every study runs this function. It knows nothing of Ray, MLflow or YAML: it takes a
:class:`~ablate.config.TrainConfig` and a callback that receives a dict of metrics at each evaluation
point, and returns a :class:`TrainResult`. Ray Tune calls it through a thin adapter
(:mod:`ablate.search`); a unit test calls it with a list's ``append``::

    >>> from ablate.config import TrainConfig, DataConfig, ModelSpec, TrainerConfig
    >>> cfg = TrainConfig(model=ModelSpec(n=1), data=DataConfig(name="synthetic", val_size=100),
    ...                   trainer=TrainerConfig(iterations=20, batch_size=32, eval_every=10))
    >>> seen = []
    >>> result = train(cfg, seen.append)
    >>> [m["iteration"] for m in seen], result.status
    ([10, 20], 'finished')

The training path (paper sec. 4.2): SGD with momentum and weight decay; the lr set per iteration by
:mod:`ablate.schedule`; whole-batch augmentation on the device (:class:`ablate.data.DeviceData`);
optional bf16 autocast, channels_last and torch.compile. The recipe's loop is :mod:`ablate.loop`, shared
with the fused trainer (:mod:`ablate.fused`); this module is its plain engine, one ``nn.Module`` and its
``torch.optim.SGD``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ablate.checkpoint import CHECKPOINT_FILE, CheckpointError
from ablate.config import TrainConfig
from ablate.loop import Member, ReportCallback, Run, TrainResult, as_path, deterministic, prepare, run_members

__all__ = ["CHECKPOINT_FILE", "CheckpointError", "PlainEngine", "ReportCallback", "TrainResult", "train"]


def train(
    config: TrainConfig,
    report: ReportCallback,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``config`` and call ``report(metrics)`` at every evaluation point; see the module docstring.

    ``checkpoint_dir``: write ``checkpoint.pt`` there before each report (a diverged run writes the
    marker ``diverged.json`` instead, :mod:`ablate.checkpoint`). ``resume_from``: a directory with
    ``checkpoint.pt`` to continue from exactly (or with the marker: the run stays diverged).

    Operation order: :func:`ablate.loop.prepare` (data, model, optimiser, position) -> the plain engine
    -> :func:`ablate.loop.run_members`, until the run's length or a divergence.
    """
    with deterministic(config.trainer.deterministic):
        run = prepare([config], [report], checkpoint_dirs=[as_path(checkpoint_dir)], resume_dirs=[as_path(resume_from)])
        (result,) = run_members(run, PlainEngine(run.members[0], run))
        return result


class PlainEngine:
    """One member's ``nn.Module`` (or its ``torch.compile`` wrapper) stepped by its ``torch.optim.SGD``."""

    def __init__(self, member: Member, run: Run):
        t = member.config.trainer
        self.model, self.optimizer, self.autocast = member.model, member.optimizer, run.autocast
        self.forward = torch.compile(self.model, mode=t.compile_mode) if t.compile else self.model
        self.parts = self.model.parts()  # per-part gradient norms

    def step(self, batches, lrs, *, grad_norms):
        """Set the lr, forward (autocast), zero the grads, backward, sample gradient norms, update.

        Returns the batch's loss and wrong predictions (device tensors: no sync) and the norms, if sampled.
        """
        ((x, y),), (lr,) = batches, lrs
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = self._grad_norms() if grad_norms else None
        self.optimizer.step()
        return loss.detach(), (logits.argmax(1) != y).sum(), norms

    def _grad_norms(self) -> dict[str, torch.Tensor]:
        norms = {}
        for name, module in self.parts.items():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            if grads:
                norms[name] = torch.nn.utils.get_total_norm(grads).double()
        return norms

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def train_mode(self) -> None:
        self.model.train()

    def eval_mode(self) -> None:
        self.model.eval()

    def sync_members(self) -> None:
        """The model is the member's own: always up to date."""

    def drop(self, keep: list[int]) -> None:
        """One member: once it ends, the loop ends."""
