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
optional bf16 autocast, channels_last and torch.compile. Nothing on the hot path waits for the device
except the paper's warm-up checks (while warm-up lasts) and one finiteness check every
``DIVERGENCE_CHECK_EVERY`` iterations.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ablate.config import ConfigError, TrainConfig
from ablate.data import DeviceData, Splits, load_dataset
from ablate.errors import UserError
from ablate.metrics import GRAD_NORM_PREFIX, ITERATION, LAYER_RESPONSES, STATUS, Status
from ablate.models import build_model
from ablate.schedule import PaperWarmup, learning_rate

__all__ = ["CHECKPOINT_FILE", "CheckpointError", "ReportCallback", "TrainResult", "resolve_device", "speed_defaults",
           "train"]

CHECKPOINT_FILE = "checkpoint.pt"
DIVERGENCE_CHECK_EVERY = 50  # iterations between non-finite loss checks (each one syncs the device)

# cuBLAS computes deterministically only with a fixed workspace, which PyTorch checks once per process, at its
# first cuBLAS call: without it trainer.deterministic on CUDA raises at the first linear layer. Set on import,
# before any run touches CUDA (a value the user set is kept); 8 buffers of 4 MiB, costless here.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ReportCallback = Callable[[dict[str, Any]], None]  # report(metrics): the keys are declared in ablate.metrics


class CheckpointError(UserError):
    """A ``checkpoint.pt`` that cannot be resumed from: missing, unreadable, not one of ours, or of another model."""


@dataclass
class TrainResult:
    """What one run produced: its status, every reported metric dict, and the layer responses."""

    status: str  # one of TRAINER_END_STATUSES: finished | diverged
    history: list[dict[str, Any]] = field(default_factory=list)
    layer_responses: dict[str, list] | None = None  # {"names": [...], "std": [...]} in network order

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def speed_defaults(device: torch.device) -> bool:
    """Whether bf16 autocast and channels_last help on ``device`` (the rule behind their ``None`` default).

    CUDA: when the GPU supports bf16. CPU: when it has AVX512-BF16 or AMX units (oneDNN then runs bf16
    convolutions natively); measured in docs/BENCHMARKS.md.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX") and _cpu_has_bf16()
    return False


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# -- the run's state -----------------------------------------------------------------------------


class _Window:
    """Sums over the iterations since the last evaluation, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device, parts: list[str]):
        self.device, self.parts = device, parts
        self.reset()

    def reset(self) -> None:
        self.loss, self.wrong, self.images = self._zero(), self._zero(), 0
        self.grad_norms = {p: self._zero() for p in self.parts}
        self.grad_samples = 0
        self.train_seconds = 0.0

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        self.loss += loss.double() * images
        self.wrong += wrong.double()
        self.images += images


@dataclass
class _Position:
    """Where the run is: enough, with the model and optimiser, to continue exactly."""

    iteration: int = 0
    epoch: int = 0  # full epochs completed
    batch_in_epoch: int = 0  # batches consumed of the current epoch
    epoch_rng: torch.Tensor | None = None  # data generator state at the start of the current epoch
    wall_time: float = 0.0  # seconds spent before the last checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    config: TrainConfig,
    report: ReportCallback,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``config`` and call ``report(metrics)`` at every evaluation point; see the module docstring.

    ``checkpoint_dir``: write ``checkpoint.pt`` there before each report (not before the report of a
    diverged run). ``resume_from``: a directory with ``checkpoint.pt`` to continue from exactly.

    Operation order: :func:`_setup` (data, model, optimiser, position) -> :func:`_step` per iteration
    -> :func:`_evaluate_and_report` at each evaluation point, until the run's length or a divergence.
    """
    with _deterministic(config.trainer.deterministic):
        run = _setup(config, resume_from)
        return _loop(run, report, None if checkpoint_dir is None else Path(checkpoint_dir))


@contextmanager
def _deterministic(enabled: bool):
    """torch.use_deterministic_algorithms for the run only, restoring the caller's setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(enabled or before)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@dataclass(eq=False)
class _Run:
    """One run's working set, built once by :func:`_setup`; the step and the evaluation read and advance it."""

    config: TrainConfig
    device: torch.device
    model: torch.nn.Module  # the network itself: state, parts(), response_modules()
    forward: Callable[[torch.Tensor], torch.Tensor]  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    autocast: AbstractContextManager  # bf16 autocast, or a no-op
    train_data: DeviceData
    val_data: DeviceData | None  # None when data.val_size = 0
    test_data: DeviceData | None
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]  # endless training batches, epoch after epoch
    batches_per_epoch: int
    total: int  # run length in iterations
    eval_every: int  # iterations between evaluation points
    warmup: PaperWarmup
    pos: _Position
    parts: dict[str, torch.nn.Module]  # per-part gradient norms
    window: _Window
    warm_wrong: torch.Tensor  # wrong predictions since the last warm-up check, on the device
    started: float  # perf_counter() of the run's start, time before a resume included


def _setup(config: TrainConfig, resume_from: str | os.PathLike | None) -> _Run:
    """Data on the device, the model (seeded initialisation), the optimiser, and the position (resumed or new)."""
    t = config.trainer
    device = resolve_device(t.device)
    fast = speed_defaults(device)
    use_bf16 = fast if t.bf16 is None else t.bf16
    channels_last = fast if t.channels_last is None else t.channels_last

    splits = load_dataset(config.data)
    torch.manual_seed(config.seed)  # initialisation; data order uses its own generator below
    model = build_model(config.model, in_channels=splits.in_channels, num_classes=splits.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_data, val_data, test_data = _device_splits(splits, device, channels_last)
    optimizer = _optimizer(model, config)

    if len(train_data) < t.batch_size:  # a user's config, not a bug: say which keys to change
        raise ConfigError(
            f"data: {len(train_data)} training images is fewer than one batch (trainer.batch_size={t.batch_size}); "
            "lower trainer.batch_size or use more data (data.train_size, data.val_size)"
        )
    batches_per_epoch = train_data.batches_per_epoch(t.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    warmup, pos = PaperWarmup.start(t), _Position()
    if resume_from is not None:
        pos, warmup = _load_checkpoint(Path(resume_from), model, optimizer)
    parts = model.parts()
    return _Run(
        config=config, device=device, model=model,
        forward=torch.compile(model, mode=t.compile_mode) if t.compile else model,
        optimizer=optimizer,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext(),
        train_data=train_data, val_data=val_data, test_data=test_data,
        batches=_epoch_batches(train_data, t.batch_size, generator, config.data.augment, pos),
        batches_per_epoch=batches_per_epoch,
        total=t.run_length(batches_per_epoch),
        eval_every=t.eval_every or batches_per_epoch,
        warmup=warmup, pos=pos, parts=parts, window=_Window(device, list(parts)),
        warm_wrong=torch.zeros((), dtype=torch.float64, device=device),
        started=time.perf_counter() - pos.wall_time,
    )


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the recipe's momentum, weight decay and Nesterov switch (paper sec. 4.2); lr set per step."""
    t = config.trainer
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
        nesterov=t.nesterov, foreach=True,
    )


def _loop(run: _Run, report: ReportCallback, checkpoint_dir: Path | None) -> TrainResult:
    """Steps until the run's length; at each evaluation point (or a divergence) evaluate and report.

    Nothing here waits for the device except the warm-up checks (while warm-up lasts) and one
    finiteness check every ``DIVERGENCE_CHECK_EVERY`` iterations.
    """
    pos = run.pos
    run.model.train()
    tick = time.perf_counter()
    while pos.iteration < run.total:
        lr, wrong = _step(run)
        if run.warmup.active:
            _check_warmup(run, wrong)
        diverged = pos.iteration % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(run.window.loss).item()
        at_eval = pos.iteration % run.eval_every == 0 or pos.iteration == run.total
        if not (at_eval or diverged):
            continue
        _sync(run.device)
        run.window.train_seconds += time.perf_counter() - tick
        metrics = _evaluate_and_report(run, lr, report, checkpoint_dir, diverged=diverged)
        if metrics[STATUS] == Status.DIVERGED:
            return TrainResult(Status.DIVERGED, pos.history)
        tick = time.perf_counter()
    final = pos.history[-1] if pos.history else {}
    return TrainResult(Status.FINISHED, pos.history, final.get(LAYER_RESPONSES))


def _step(run: _Run) -> tuple[float, torch.Tensor]:
    """One iteration: set the lr, forward (autocast), backward, sample gradient norms, update, add to the window.

    Returns the lr used and the batch's wrong predictions (a device tensor: no sync).
    """
    t, pos = run.config.trainer, run.pos
    x, y = next(run.batches)
    lr = learning_rate(t, pos.iteration, run.total, warming_up=run.warmup.active)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with run.autocast:
        logits = run.forward(x)
        loss = F.cross_entropy(logits, y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    pos.iteration += 1
    if pos.iteration % t.grad_norm_every == 0:
        _add_grad_norms(run.window, run.parts)
    run.optimizer.step()
    wrong = (logits.argmax(1) != y).sum()
    run.window.add(loss.detach(), wrong, y.numel())
    return lr, wrong


def _check_warmup(run: _Run, wrong: torch.Tensor) -> None:
    """The paper's warm-up: every ``check_every`` iterations, the window's training error decides whether it ends."""
    t = run.config.trainer
    run.warm_wrong += wrong
    if run.warmup.needs_check(t, run.pos.iteration):
        window_error = run.warm_wrong.item() / (t.warmup.check_every * t.batch_size)
        run.warmup.update(t, run.pos.iteration, window_error)
        run.warm_wrong.zero_()


def _evaluate_and_report(
    run: _Run, lr: float, report: ReportCallback, checkpoint_dir: Path | None, *, diverged: bool
) -> dict[str, Any]:
    """The metrics of the window since the last report, then ``report(metrics)``; returns them.

    Diverged (a non-finite loss): status ``diverged``, no evaluation, no checkpoint. Otherwise:
    validation and test errors -> at the run's end, the layer responses and status ``finished`` ->
    the checkpoint -> ``report`` -> a fresh window.
    """
    pos, t = run.pos, run.config.trainer
    metrics = _window_metrics(run.window, pos, run.batches_per_epoch, lr, run.started)
    if diverged or not math.isfinite(metrics["train_loss"]):
        metrics[STATUS] = Status.DIVERGED
        pos.history.append(metrics)
        report(metrics)
        return metrics
    metrics |= _evaluate(run.forward, run.model, run.val_data, run.test_data, t.eval_batch_size, run.autocast)
    metrics[STATUS] = Status.RUNNING
    if pos.iteration == run.total:
        responses = layer_responses(run.model, run.test_data or run.val_data, t.eval_batch_size, run.autocast)
        metrics |= {STATUS: Status.FINISHED, LAYER_RESPONSES: responses}
    pos.history.append(metrics)
    pos.wall_time = time.perf_counter() - run.started
    if checkpoint_dir is not None:
        _save_checkpoint(checkpoint_dir, run.model, run.optimizer, pos, run.warmup)
    report(metrics)
    run.window.reset()
    run.model.train()
    return metrics


# -- pieces of the loop ---------------------------------------------------------------------------


def _device_splits(splits: Splits, device: torch.device, channels_last: bool):
    def put(x, y, pad):
        if x is None or len(x) == 0:
            return None
        return DeviceData(x, y, mean=splits.mean, std=splits.std, device=device, channels_last=channels_last, pad=pad)

    # only the training split is augmented, so only it is kept padded for random crops
    return (put(splits.train_x, splits.train_y, 4), put(splits.val_x, splits.val_y, 0),
            put(splits.test_x, splits.test_y, 0))


def _epoch_batches(
    data: DeviceData, batch_size: int, generator: torch.Generator, augment: bool, pos: _Position
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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


def _add_grad_norms(window: _Window, parts: dict[str, torch.nn.Module]) -> None:
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            window.grad_norms[name] += torch.nn.utils.get_total_norm(grads).double()
    window.grad_samples += 1


def _window_metrics(window: _Window, pos: _Position, batches_per_epoch: int, lr: float, started: float) -> dict:
    """The training side of a report (keys: :mod:`ablate.metrics`); ``_evaluate`` adds val/test errors."""
    images = max(window.images, 1)
    metrics = {
        ITERATION: pos.iteration,
        "epoch": pos.iteration / batches_per_epoch,
        "train_loss": window.loss.item() / images,
        "train_error": window.wrong.item() / images,
        "lr": lr,
        "images_per_s": window.images / max(window.train_seconds, 1e-9),
        "wall_time": time.perf_counter() - started,
    }
    for name, total in window.grad_norms.items():
        metrics[GRAD_NORM_PREFIX + name] = total.item() / max(window.grad_samples, 1)
    return metrics


@torch.no_grad()
def _evaluate(forward, model, val_data, test_data, batch_size, autocast) -> dict[str, float]:
    """Validation and test error. ``forward`` may return (K, N, classes) logits of K fused runs
    (:mod:`ablate.fused`): each error is then a list of K fractions."""
    model.eval()
    out = {}
    for key, data in (("val_error", val_data), ("test_error", test_data)):
        if data is None:
            continue
        wrong = torch.zeros((), dtype=torch.float64, device=data.device)
        for x, y in data.eval_batches(batch_size):
            with autocast:
                wrong = wrong + (forward(x).argmax(-1) != y).sum(-1)
        out[key] = (wrong / len(data)).tolist()
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- checkpoints ----------------------------------------------------------------------------------


def _save_checkpoint(directory: Path, model, optimizer, pos: _Position, warmup: PaperWarmup) -> None:
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


def _load_checkpoint(directory: Path, model, optimizer) -> tuple[_Position, PaperWarmup]:
    """Model, optimiser and global RNG states restored; the position and warm-up state returned.

    The file is read as data only (``weights_only``: tensors, numbers, strings, lists and dicts, which is
    all a checkpoint holds), so a crafted file cannot run code; anything but what :func:`_save_checkpoint`
    wrote for this model is one :class:`CheckpointError`. The data generator is not touched here:
    :func:`_epoch_batches` replays the interrupted epoch from ``position.epoch_rng``, the one place that
    restores it.
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
        pos = _Position(**state["position"])
        warmup = PaperWarmup.from_state(state["warmup"])
    except KeyError as err:
        raise CheckpointError(f"{path}: not a checkpoint written by ablate (no {err.args[0]!r} entry)") from None
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: written for another model or setting: {_detail(err)}") from None
    return pos, warmup


def _detail(err: BaseException) -> str:
    """The telling line of an error, at most 160 characters (torch's state-dict errors run to pages)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if not line.endswith(":")] or lines or [type(err).__name__]
    text = telling[0]
    return text if len(text) <= 160 else text[:157] + "..."
