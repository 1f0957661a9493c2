"""The one training loop, over a list of members, behind one seam: the :class:`Engine`.

Everything that is a fact of the recipe is written here once, for a single run
(:func:`ablate.trainer.train`, the plain engine: an ``nn.Module``, ``torch.optim.SGD``, ``torch.compile``)
and for K fused runs (:func:`ablate.fused.train_fused`, the vmap engine): the run length and evaluation
points, the lr schedule and the paper's warm-up (sec. 4.2), the gradient-norm samples, the divergence
checks, evaluation, layer responses, checkpoints and the reported metrics. What differs, one step of
every member, their logits and bringing the plain per-member copies up to date, is the engine's.

Operation order: :func:`prepare` (data on the device; per member, in order: ``torch.manual_seed(seed)``,
the model, its SGD, the position (new, resumed, or ended by a diverged marker), its batches) -> the
engine -> :func:`run_members`: per iteration each member's batch and lr -> ``engine.step`` (forward,
backward, gradient-norm sample every ``grad_norm_every``, SGD update) -> the window's sums -> the
warm-up checks (while warm-up lasts) -> a finiteness check every ``DIVERGENCE_CHECK_EVERY``; at a report
point: diverged members reported and dropped, then for the others the window's metrics -> validation
and test errors -> at the run's end the layer responses -> the checkpoint -> the report -> a fresh window.
Nothing on the hot path waits for the device except the warm-up and finiteness checks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch

from ablate.checkpoint import Position, load_checkpoint, read_diverged, save_checkpoint, write_diverged
from ablate.config import ConfigError, TrainConfig
from ablate.data import DeviceData, Splits, load_dataset
from ablate.device import resolve_device, speed_defaults, sync
from ablate.metrics import GRAD_NORM_PREFIX, ITERATION, LAYER_RESPONSES, STATUS, Status
from ablate.models import build_model
from ablate.schedule import PaperWarmup, learning_rate

__all__ = ["DIVERGENCE_CHECK_EVERY", "Engine", "Member", "ReportCallback", "Run", "TrainResult", "active_members",
           "as_path", "deterministic", "layer_responses", "prepare", "run_members"]

DIVERGENCE_CHECK_EVERY = 50  # iterations between non-finite loss checks (each one syncs the device)

ReportCallback = Callable[[dict[str, Any]], None]  # report(metrics): the keys are declared in ablate.metrics
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainResult:
    """What one run produced: its status, every reported metric dict, and the layer responses."""

    status: str  # one of TRAINER_END_STATUSES: finished | diverged
    history: list[dict[str, Any]] = field(default_factory=list)
    layer_responses: dict[str, list] | None = None  # {"names": [...], "std": [...]} in network order

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class Engine(Protocol):
    """How the members' models compute: the one seam between the loop and the plain or vmap engine."""

    def step(self, batches: list[Batch], lrs: list[float], *, grad_norms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """One update of every active member: its mean loss and wrong predictions ((K,) or, for one member,
        scalars, on the device), and with ``grad_norms`` each part's gradient 2-norm (float64, per member)."""

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation logits of an unaugmented batch: (N, classes) for one member, (K, N, classes) for K."""

    def train_mode(self) -> None: ...

    def eval_mode(self) -> None: ...

    def sync_members(self) -> None:
        """Bring every active member's ``model`` and ``optimizer`` up to date (for checkpoints and responses)."""

    def drop(self, keep: list[int]) -> None:
        """Carry on with the active members at positions ``keep`` only."""


@dataclass(eq=False)
class Member:
    """One run of the loop: its recipe, callback, plain model and SGD (the checkpoint format), and where it is."""

    index: int  # position in the caller's list
    config: TrainConfig
    report: ReportCallback
    model: torch.nn.Module  # the network itself: state, parts(), response_modules()
    optimizer: torch.optim.SGD
    pos: Position
    warmup: PaperWarmup
    batches: Iterator[Batch]  # endless training batches, epoch after epoch
    checkpoint_dir: Path | None
    result: TrainResult | None = None  # set once the member has ended early (diverged)


@dataclass(eq=False)
class Run:
    """What the members share, built once by :func:`prepare`."""

    device: torch.device
    autocast: AbstractContextManager  # bf16 autocast, or a no-op
    channels_last: bool
    train_data: DeviceData
    val_data: DeviceData | None  # None when data.val_size = 0
    test_data: DeviceData | None
    batches_per_epoch: int
    total: int  # run length in iterations
    eval_every: int  # iterations between evaluation points
    members: list[Member]
    dims: dict[str, int]  # in_channels, num_classes: what the model builder needs of the data


@contextmanager
def deterministic(enabled: bool):
    """torch.use_deterministic_algorithms for the run only, restoring the caller's setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def prepare(configs: Sequence[TrainConfig], reports: Sequence[ReportCallback], *,
            checkpoint_dirs: Sequence[Path | None], resume_dirs: Sequence[Path | None]) -> Run:
    """Data on the device, and per member its model (seeded initialisation), SGD, position and batches.

    The configs share everything but their recipe and seed (``train_fused`` checks that); the first one's
    trainer section decides device, speed switches, batch size and run length.
    """
    t = configs[0].trainer
    device = resolve_device(t.device)
    fast = speed_defaults(device)
    use_bf16 = fast if t.bf16 is None else t.bf16
    channels_last = fast if t.channels_last is None else t.channels_last
    splits = load_dataset(configs[0].data)
    train_data, val_data, test_data = _device_splits(splits, device, channels_last)
    if len(train_data) < t.batch_size:  # a user's config, not a bug: say which keys to change
        raise ConfigError(
            f"data: {len(train_data)} training images is fewer than one batch (trainer.batch_size={t.batch_size}); "
            "lower trainer.batch_size or use more data (data.train_size, data.val_size)"
        )
    batches_per_epoch = train_data.batches_per_epoch(t.batch_size)
    dims = dict(in_channels=splits.in_channels, num_classes=splits.num_classes)
    members = []
    for index, (config, report, checkpoint_dir, resume_from) in enumerate(zip(configs, reports, checkpoint_dirs,
                                                                              resume_dirs)):
        torch.manual_seed(config.seed)  # initialisation; data order uses its own generator below
        model = build_model(config.model, **dims).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = _optimizer(model, config)
        generator = torch.Generator().manual_seed(config.seed)  # replaced by the checkpoint's on resume
        pos, warmup, result = Position(), PaperWarmup.start(config.trainer), None
        if resume_from is not None:
            ended = read_diverged(resume_from)
            if ended is not None:  # the marker of a diverged run: it stays ended
                pos.history, result = ended, TrainResult(Status.DIVERGED, ended)
            else:
                pos, warmup = load_checkpoint(resume_from, model, optimizer)
        batches = _epoch_batches(train_data, t.batch_size, generator, config.data.augment, pos)
        members.append(Member(index, config, report, model, optimizer, pos, warmup, batches, checkpoint_dir, result))
    return Run(
        device=device, autocast=torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext(),
        channels_last=channels_last, train_data=train_data, val_data=val_data, test_data=test_data,
        batches_per_epoch=batches_per_epoch, total=t.run_length(batches_per_epoch),
        eval_every=t.eval_every or batches_per_epoch, members=members, dims=dims,
    )


def active_members(run: Run) -> list[Member]:
    """The members that have not ended, all at one iteration (ConfigError for checkpoints that disagree)."""
    active = [m for m in run.members if m.result is None]
    if len({m.pos.iteration for m in active}) > 1:
        raise ConfigError("the members' checkpoints are at different iterations; cannot resume them together")
    return active


def run_members(run: Run, engine: Engine, after_reports: Callable[[], None] = lambda: None) -> list[TrainResult]:
    """Steps until the run's length; at each report point (an evaluation, or a divergence) report each member.

    ``after_reports()`` is called once after the reports of each report point, when every member's
    checkpoint of that point is written. Returns one :class:`TrainResult` per member.
    """
    active = active_members(run)
    t = run.members[0].config.trainer
    iteration = active[0].pos.iteration if active else run.total
    window = _Window(run.device, list(run.members[0].model.parts()), len(active))
    warm_wrong = torch.zeros(len(active), dtype=torch.float64, device=run.device)
    started = time.perf_counter() - max((m.pos.wall_time for m in active), default=0.0)
    engine.train_mode()
    tick = time.perf_counter()
    while active and iteration < run.total:
        batches = [next(m.batches) for m in active]
        lrs = [learning_rate(m.config.trainer, iteration, run.total, warming_up=m.warmup.active) for m in active]
        iteration += 1
        losses, wrong, norms = engine.step(batches, lrs, grad_norms=iteration % t.grad_norm_every == 0)
        for m in active:
            m.pos.iteration = iteration
        if norms is not None:
            window.add_grad_norms(norms)
        window.add(losses, wrong, t.batch_size)
        if any(m.warmup.active for m in active):  # the paper's warm-up: the window's training error decides
            warm_wrong += wrong
            for j, m in enumerate(active):
                c = m.config.trainer
                if m.warmup.needs_check(c, iteration):
                    m.warmup.update(c, iteration, warm_wrong[j].item() / (c.warmup.check_every * t.batch_size))
                    warm_wrong[j] = 0
        check = iteration % DIVERGENCE_CHECK_EVERY == 0
        finite = torch.isfinite(window.loss).tolist() if check else [True] * len(active)
        at_eval = iteration % run.eval_every == 0 or iteration == run.total
        if not (at_eval or not all(finite)):
            continue

        sync(run.device)
        window.train_seconds += time.perf_counter() - tick
        metrics = [_window_metrics(window, j, m.pos, run.batches_per_epoch, lrs[j], started)
                   for j, m in enumerate(active)]
        ended = [j for j, m in enumerate(metrics) if not (finite[j] and math.isfinite(m["train_loss"]))]
        for j in ended:
            _diverged(active[j], metrics[j])
        evaluated = [(m, metrics[j]) for j, m in enumerate(active) if j not in ended]
        if at_eval and evaluated:
            _evaluation_point(run, engine, active, evaluated)
        after_reports()
        if ended:
            keep = [j for j in range(len(active)) if j not in ended]
            active = [active[j] for j in keep]
            if active:
                engine.drop(keep)
                window.select(torch.tensor(keep, device=run.device))
                warm_wrong = warm_wrong[torch.tensor(keep, device=run.device)]
        if at_eval:
            window.reset()
            engine.train_mode()
        tick = time.perf_counter()
    return [m.result or TrainResult(Status.FINISHED, m.pos.history, m.pos.history[-1].get(LAYER_RESPONSES)
                                    if m.pos.history else None) for m in run.members]


def _evaluation_point(run: Run, engine: Engine, active: list[Member], evaluated: list[tuple[Member, dict]]) -> None:
    """Per member: validation and test errors -> at the run's end the layer responses -> the checkpoint;
    then every report (so each member's checkpoint of the point is written before any report)."""
    t = run.members[0].config.trainer
    errors = _evaluate(engine, run.val_data, run.test_data, t.eval_batch_size, run.autocast)
    finished = active[0].pos.iteration == run.total
    if finished or any(m.checkpoint_dir is not None for m, _ in evaluated):
        engine.sync_members()
    for member, metrics in evaluated:
        position = active.index(member)
        metrics |= {key: values[position] for key, values in errors.items()}
        metrics[STATUS] = Status.RUNNING
        if finished:
            responses = layer_responses(member.model, run.test_data or run.val_data, t.eval_batch_size, run.autocast)
            metrics |= {STATUS: Status.FINISHED, LAYER_RESPONSES: responses}
        member.pos.history.append(metrics)
        member.pos.wall_time = metrics["wall_time"]
        if member.checkpoint_dir is not None:
            save_checkpoint(member.checkpoint_dir, member.model, member.optimizer, member.pos, member.warmup)
    for member, metrics in evaluated:
        member.report(metrics)


def _diverged(member: Member, metrics: dict) -> None:
    """A non-finite loss: status ``diverged``, no evaluation, no checkpoint: the marker (ablate.checkpoint)."""
    metrics[STATUS] = Status.DIVERGED
    member.pos.history.append(metrics)
    member.result = TrainResult(Status.DIVERGED, member.pos.history)
    if member.checkpoint_dir is not None:
        write_diverged(member.checkpoint_dir, member.pos.history)
    member.report(metrics)


# -- pieces of the loop ---------------------------------------------------------------------------


class _Window:
    """Sums over the iterations since the last evaluation, one entry per member, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device, parts: list[str], members: int):
        self.device, self.parts, self.members = device, parts, members
        self.reset()

    def reset(self) -> None:
        self.loss, self.wrong, self.images = self._zero(), self._zero(), 0
        self.grad_norms = {p: self._zero() for p in self.parts}
        self.grad_samples = 0
        self.train_seconds = 0.0

    def _zero(self) -> torch.Tensor:
        return torch.zeros(self.members, dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        self.loss += loss.double() * images
        self.wrong += wrong.double()
        self.images += images

    def add_grad_norms(self, norms: dict[str, torch.Tensor]) -> None:
        for part, norm in norms.items():
            self.grad_norms[part] += norm
        self.grad_samples += 1

    def select(self, keep: torch.Tensor) -> None:
        self.members = len(keep)
        self.loss, self.wrong = self.loss[keep], self.wrong[keep]
        self.grad_norms = {part: total[keep] for part, total in self.grad_norms.items()}


def _window_metrics(window: _Window, j: int, pos: Position, batches_per_epoch: int, lr: float, started: float) -> dict:
    """The training side of member ``j``'s report (keys: :mod:`ablate.metrics`); evaluation adds val/test errors."""
    images = max(window.images, 1)
    metrics = {
        ITERATION: pos.iteration,
        "epoch": pos.iteration / batches_per_epoch,
        "train_loss": window.loss[j].item() / images,
        "train_error": window.wrong[j].item() / images,
        "lr": lr,
        "images_per_s": window.images / max(window.train_seconds, 1e-9),
        "wall_time": time.perf_counter() - started,
    }
    for name, total in window.grad_norms.items():
        metrics[GRAD_NORM_PREFIX + name] = total[j].item() / max(window.grad_samples, 1)
    return metrics


def _device_splits(splits: Splits, device: torch.device, channels_last: bool):
    def put(x, y, pad):
        if x is None or len(x) == 0:
            return None
        return DeviceData(x, y, mean=splits.mean, std=splits.std, device=device, channels_last=channels_last, pad=pad)

    # only the training split is augmented, so only it is kept padded for random crops
    return (put(splits.train_x, splits.train_y, 4), put(splits.val_x, splits.val_y, 0),
            put(splits.test_x, splits.test_y, 0))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with the recipe's momentum, weight decay and Nesterov switch (paper sec. 4.2); lr set per step."""
    t = config.trainer
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
        nesterov=t.nesterov, foreach=True,
    )


def _epoch_batches(
    data: DeviceData, batch_size: int, generator: torch.Generator, augment: bool, pos: Position
) -> Iterator[Batch]:
    """Endless batches, epoch after epoch; keeps ``pos`` able to replay the current epoch on resume."""
    if pos.epoch_rng is not None:  # resuming: replay the interrupted epoch from its start
        generator.set_state(pos.epoch_rng)
    skip = pos.batch_in_epoch
    while True:
        pos.epoch_rng = generator.get_state()
        for x, y in islice(data.train_batches(batch_size, generator, augment=augment), skip, None):
            pos.batch_in_epoch += 1
            yield x, y
        pos.epoch += 1
        pos.batch_in_epoch, skip = 0, 0


@torch.no_grad()
def _evaluate(engine: Engine, val_data, test_data, batch_size, autocast) -> dict[str, list[float]]:
    """Validation and test error of every active member: each a list of fractions, one per member."""
    engine.eval_mode()
    out = {}
    for key, data in (("val_error", val_data), ("test_error", test_data)):
        if data is None:
            continue
        wrong = torch.zeros((), dtype=torch.float64, device=data.device)
        for x, y in data.eval_batches(batch_size):
            with autocast:
                wrong = wrong + (engine.logits(x).argmax(-1) != y).sum(-1)
        out[key] = torch.atleast_1d(wrong / len(data)).tolist()
    return out


@torch.no_grad()
def layer_responses(model, data: DeviceData | None, batch_size: int, autocast=nullcontext()) -> dict[str, list]:
    """Fig. 7: the standard deviation of every 3x3 layer's response over ``data``, in network order.

    The response is the output of the modules ``model.response_modules()`` names (after BN, before the
    addition and the nonlinearity, paper sec. 4.2); the std is over all its elements, accumulated in float64.
    """
    if data is None:
        return {"names": [], "std": []}
    named = model.response_modules()
    sums = torch.zeros(len(named), 3, dtype=torch.float64, device=data.device)  # count, sum, sum of squares

    def hook(index):
        def record(_module, _inputs, output):
            out = output.detach().double()
            sums[index] += torch.stack([out.new_tensor(out.numel()), out.sum(), out.square().sum()])

        return record

    handles = [module.register_forward_hook(hook(i)) for i, (_, module) in enumerate(named)]
    model.eval()
    try:
        for x, _ in data.eval_batches(batch_size):
            with autocast:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    count, total, squares = sums.unbind(1)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return {"names": [name for name, _ in named], "std": std.tolist()}


def as_path(directory: str | os.PathLike | None) -> Path | None:
    """A caller's folder argument as a Path (None stays None)."""
    return None if directory is None else Path(directory)
