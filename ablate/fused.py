"""Fused trials: K runs of one architecture trained at once, as one set of kernels.

Horizontally fused training (Wang et al., "Horizontally Fused Training Array", MLSys 2021): runs
that train the same shapes (the seeds of a configuration, and configurations that differ only in
their optimiser recipe) are trained as one wider model, each conv grouped K ways and each BN over
K x C channels, so that a GPU too large for one small CIFAR ResNet runs K of them in the kernels of
one. Each member keeps its own seed (initialisation, data order, augmentation), learning rate,
momentum, weight decay, schedule and warm-up, and is reported through its own callback exactly as
:func:`ablate.trainer.train` would report it alone; a member whose loss turns non-finite is reported
``diverged`` and dropped from the stack, the others go on::

    >>> from ablate.config import TrainConfig, DataConfig, ModelSpec, TrainerConfig, with_overrides
    >>> cfg = TrainConfig(model=ModelSpec(n=1), data=DataConfig(name="synthetic", val_size=100),
    ...                   trainer=TrainerConfig(iterations=20, batch_size=32, eval_every=10, device="cpu"))
    >>> seen = [[], []]
    >>> results = train_fused([cfg, with_overrides(cfg, {"seed": 1, "trainer.lr": 0.05})],
    ...                       [seen[0].append, seen[1].append])
    >>> [r.status for r in results], [m["iteration"] for m in seen[1]]
    (['finished', 'finished'], [10, 20])

How: ``torch.func``. The K members are built by the one model builder (:func:`ablate.models.build_model`,
each after ``torch.manual_seed(seed)`` as ``train`` does); their parameters are stacked into one flat
vector in which every parameter is a contiguous (K, *shape) slice, their BN buffers into (K, C)
tensors; one copy of the network on the meta device is run with ``functional_call`` under
``torch.vmap``. vmap turns a conv with batched weights and batched input into one conv grouped K
ways, and BN with batched buffers updates each member's running statistics (and uses them in eval
mode); at evaluation the unbatched input meets batched weights in one conv with K x C_out filters.

Why vmap over the model builder and not a grouped-conv network written from the spec: it covers the
whole design space (every block, shortcut and width) with no second implementation of the ResNet to
keep in step, and a small experiment showed it exact: for ResNet-8-w8, K = 3, the vmapped forward
matched the three separate models to 3.6e-7, the gradients to 1.8e-7, the BN running statistics
after a step to 6e-8 and the eval-mode output to 2.4e-7. Cost: grouped convs are slow on CPUs
(oneDNN): there fused training is slower than the runs one by one (docs/BENCHMARKS.md). It pays on
GPUs, where one small ResNet leaves most of the device idle.

Operation order of one step: each member's batch from its own generator -> stacked as (B, K, C, H, W)
(channels_last: one NHWC tensor of B x (K*C) channels, which the grouped conv reads without a copy)
-> vmapped forward and per-member mean cross-entropy -> one backward of their sum (the members'
gradients are independent) -> per-member gradient norms of each part every ``grad_norm_every``
iterations -> one SGD step over the flat parameter vector with per-element lr, momentum and weight
decay, the arithmetic of ``torch.optim.SGD`` (d = g + wd p; buf = m buf + d; p -= lr (d + m buf if
nesterov else buf)).

Random numbers inside the network (the ``dropout`` shortcut) are drawn per member
(``randomness="different"``), so such members match their runs alone in distribution, not bit for bit.

Checkpoints: ``checkpoint_dir/member<i>/checkpoint.pt``, each in the format ``train`` writes, so a
member can also be resumed alone by ``train``. A member that diverged keeps a checkpoint whose history
ends with its ``diverged`` report; resuming the group leaves it ended.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ablate.config import FUSABLE_KEYS, ConfigError, TrainConfig, check_fusable, fuse_key
from ablate.data import load_dataset
from ablate.metrics import LAYER_RESPONSES, STATUS, Status
from ablate.models import build_model
from ablate.schedule import PaperWarmup, learning_rate
from ablate.trainer import (
    DIVERGENCE_CHECK_EVERY,
    ReportCallback,
    TrainResult,
    _deterministic,
    _device_splits,
    _epoch_batches,
    _evaluate,
    _load_checkpoint,
    _optimizer,
    _Position,
    _save_checkpoint,
    _sync,
    _Window,
    _window_metrics,
    layer_responses,
    resolve_device,
    speed_defaults,
)

# FUSABLE_KEYS, fuse_key and check_fusable live in ablate.config (studies pack trials by them without torch)
__all__ = ["FUSABLE_KEYS", "check_fusable", "fuse_key", "member_dir", "train_fused"]


def member_dir(directory: str | os.PathLike, index: int) -> Path:
    """The folder of member ``index``'s ``checkpoint.pt`` inside a fused group's checkpoint folder."""
    return Path(directory) / f"member{index}"


# -- the stacked state ------------------------------------------------------------------------------


class _Stack:
    """The members' parameters as one flat vector (parameter i a contiguous (K, *shape) slice of it),
    their BN buffers stacked (K, ...), and the SGD momentum beside the flat vector."""

    def __init__(self, names: list[str], params: list[torch.Tensor], buffers: dict[str, torch.Tensor],
                 momentum: list[torch.Tensor]):
        self.names = names
        self.members = params[0].shape[0]
        self.shapes = [p.shape for p in params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.momentum = torch.cat([m.reshape(-1) for m in momentum])
        self.params: dict[str, torch.Tensor] = {}  # leaves sharing the flat vector's memory
        offset = 0
        for name, shape in zip(names, self.shapes):
            size = shape.numel()
            self.params[name] = self.flat[offset:offset + size].view(shape).detach().requires_grad_()
            offset += size
        self.buffers = buffers
        # per-element hyper-parameters: segment (parameter i, member k) holds numel(i) / K elements
        k = torch.arange(self.members, device=self.flat.device)
        self._segment_member = k.repeat(len(params))
        self._segment_size = torch.tensor([s.numel() // self.members for s in self.shapes for _ in range(self.members)],
                                          device=self.flat.device)

    @classmethod
    def of(cls, models: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer]) -> "_Stack":
        names = [name for name, _ in models[0].named_parameters()]
        per_model = [dict(m.named_parameters()) for m in models]
        params = [torch.stack([named[n].detach() for named in per_model]) for n in names]
        momentum = [
            torch.stack([_momentum(opt, named[n]) for opt, named in zip(optimizers, per_model)]) for n in names
        ]
        buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]) for n, _ in models[0].named_buffers()}
        return cls(names, params, buffers, momentum)

    def per_element(self, values: torch.Tensor) -> torch.Tensor:
        """(K,) per-member values -> one value per element of the flat vector."""
        return values[self._segment_member].repeat_interleave(self._segment_size, output_size=self.flat.numel())

    def momentum_views(self) -> list[torch.Tensor]:
        views, offset = [], 0
        for shape in self.shapes:
            views.append(self.momentum[offset:offset + shape.numel()].view(shape))
            offset += shape.numel()
        return views

    def select(self, keep: list[int]) -> "_Stack":
        """A new stack of the members ``keep`` (positions in this one)."""
        index = torch.tensor(keep, device=self.flat.device)
        params = [p.detach()[index] for p in self.params.values()]
        momentum = [m[index] for m in self.momentum_views()]
        return _Stack(self.names, params, {n: b[index] for n, b in self.buffers.items()}, momentum)

    @torch.no_grad()
    def sgd_step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor, wd: torch.Tensor, momentum: torch.Tensor,
                 nesterov: bool) -> None:
        """``torch.optim.SGD``'s step (dampening 0) with per-element ``lr``, ``wd``, ``momentum``."""
        d = torch.addcmul(torch.cat([g.reshape(-1) for g in grads]), wd, self.flat)
        self.momentum.mul_(momentum).add_(d)
        step = d.addcmul_(momentum, self.momentum) if nesterov else self.momentum
        self.flat.addcmul_(lr, step, value=-1)

    @torch.no_grad()
    def unstack_into(self, k: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Copy member ``k``'s parameters, buffers and momentum into a plain model and its SGD."""
        named = dict(model.named_parameters())
        for (name, stacked), momentum in zip(self.params.items(), self.momentum_views()):
            named[name].copy_(stacked[k])
            optimizer.state[named[name]]["momentum_buffer"] = momentum[k].clone()
        for name, buffer in model.named_buffers():
            buffer.copy_(self.buffers[name][k])


def _momentum(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    buffer = optimizer.state.get(param, {}).get("momentum_buffer")
    return torch.zeros_like(param) if buffer is None else buffer.detach()


class _FusedWindow(_Window):
    """The trainer's window with (K,) sums: one entry per member."""

    def __init__(self, device: torch.device, parts: list[str], members: int):
        self.members = members
        super().__init__(device, parts)

    def _zero(self) -> torch.Tensor:
        return torch.zeros(self.members, dtype=torch.float64, device=self.device)

    def member(self, k: int) -> _Window:
        """Member ``k``'s window as the trainer's own, for :func:`ablate.trainer._window_metrics`."""
        view = _Window(self.device, self.parts)
        view.loss, view.wrong, view.images = self.loss[k], self.wrong[k], self.images
        view.grad_norms = {part: total[k] for part, total in self.grad_norms.items()}
        view.grad_samples, view.train_seconds = self.grad_samples, self.train_seconds
        return view

    def select(self, keep: torch.Tensor) -> None:
        self.members = len(keep)
        self.loss, self.wrong = self.loss[keep], self.wrong[keep]
        self.grad_norms = {part: total[keep] for part, total in self.grad_norms.items()}


@dataclass
class _Member:
    """One run of the group: what ``train`` would hold for it alone."""

    index: int  # position in the caller's list (checkpoint folder member<index>)
    config: TrainConfig
    report: ReportCallback
    model: torch.nn.Module  # plain copy: checkpoints and layer responses
    optimizer: torch.optim.SGD  # plain SGD: the checkpoint format of ``train``
    pos: _Position
    warmup: PaperWarmup
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    result: TrainResult | None = None


# -- training ---------------------------------------------------------------------------------------


def train_fused(
    configs: Sequence[TrainConfig],
    reports: Sequence[ReportCallback],
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    after_reports: Callable[[], None] | None = None,
) -> list[TrainResult]:
    """Train ``configs`` fused, calling ``reports[i](metrics)`` as ``train(configs[i], reports[i])`` would.

    The configs may differ only in :data:`FUSABLE_KEYS` (ConfigError otherwise). ``checkpoint_dir``:
    every member's ``checkpoint.pt`` under ``member_dir(checkpoint_dir, i)``, written before each report
    point; ``resume_from``: a folder of such checkpoints. ``after_reports()``: called once after the
    reports of each report point (an evaluation, or the divergence of some members), when every
    member's checkpoint of that point is written: a Ray trial reports all its members there at once.
    Returns one :class:`TrainResult` per config.
    """
    configs = list(configs)
    if len(reports) != len(configs):
        raise ConfigError(f"train_fused needs one report callback per config, got {len(reports)} for {len(configs)}")
    check_fusable(configs)
    t = configs[0].trainer
    device = resolve_device(t.device)
    fast = speed_defaults(device)
    use_bf16 = fast if t.bf16 is None else t.bf16
    channels_last = fast if t.channels_last is None else t.channels_last
    with _deterministic(t.deterministic):
        run = _FusedRun(configs, reports, device, use_bf16, channels_last, checkpoint_dir, resume_from)
        return run.train(after_reports or (lambda: None))


class _FusedRun:
    """Setup in ``__init__``; ``train`` runs the loop of :func:`ablate.trainer.train` for the stack."""

    def __init__(self, configs, reports, device, use_bf16, channels_last, checkpoint_dir, resume_from):
        t = self.t = configs[0].trainer
        self.device, self.channels_last, self.checkpoint_dir = device, channels_last, checkpoint_dir
        splits = load_dataset(configs[0].data)
        dims = dict(in_channels=splits.in_channels, num_classes=splits.num_classes)
        self.train_data, self.val_data, self.test_data = _device_splits(splits, device, channels_last)
        self.batches_per_epoch = self.train_data.batches_per_epoch(t.batch_size)
        self.total = t.run_length(self.batches_per_epoch)
        self.eval_every = t.eval_every or self.batches_per_epoch
        self.members: list[_Member] = []
        for index, (config, report) in enumerate(zip(configs, reports)):
            torch.manual_seed(config.seed)  # initialisation, as train() does it
            model = build_model(config.model, **dims).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = _optimizer(model, config)  # train()'s, for its checkpoint format; the stack steps
            generator = torch.Generator().manual_seed(config.seed)  # replaced by the checkpoint's on resume
            pos, warmup = _Position(), PaperWarmup.start(config.trainer)
            if resume_from is not None:
                pos, warmup = _load_checkpoint(member_dir(resume_from, index), model, optimizer)
            batches = _epoch_batches(self.train_data, t.batch_size, generator, config.data.augment, pos)
            member = _Member(index, config, report, model, optimizer, pos, warmup, batches)
            if pos.history and pos.history[-1][STATUS] == Status.DIVERGED:  # ended before the checkpoint
                member.result = TrainResult(Status.DIVERGED, pos.history)
            self.members.append(member)
        self.active = [m for m in self.members if m.result is None]
        if len({m.pos.iteration for m in self.active}) > 1:
            raise ConfigError(f"{resume_from}: the members' checkpoints are at different iterations; cannot resume fused")
        self.iteration = self.active[0].pos.iteration if self.active else self.total
        self.wall_time = max((m.pos.wall_time for m in self.active), default=0.0)

        with torch.device("meta"):
            self.net = build_model(configs[0].model, **dims)  # shapes only: functional_call supplies the tensors
        self.parts = _part_params(self.members[0].model)
        self.stack = _Stack.of([m.model for m in self.active], [m.optimizer for m in self.active]) if self.active else None
        self._static_inputs()
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
        step = torch.vmap(self._member_step, in_dims=(0, 0, 1, 0), randomness="different")
        evaluate = torch.vmap(self._member_logits, in_dims=(0, 0, None))
        if t.compile:
            step, evaluate = torch.compile(step, mode=t.compile_mode), torch.compile(evaluate, mode=t.compile_mode)
        self._step_fn, self._eval_fn = step, evaluate
        self._hyper()

    # -- per-member functions, vmapped --------------------------------------------------------------

    def _member_logits(self, params, buffers, x):
        return functional_call(self.net, (params, buffers), (x,))

    def _member_step(self, params, buffers, x, y):
        logits = functional_call(self.net, (params, buffers), (x,))
        return logits, F.cross_entropy(logits, y)

    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self._eval_fn(self.stack.params, self.stack.buffers, x)

    # -- the loop -------------------------------------------------------------------------------------

    def train(self, after_reports: Callable[[], None]) -> list[TrainResult]:
        t, B = self.t, self.t.batch_size
        window = _FusedWindow(self.device, list(self.parts), len(self.active))
        warm_wrong = torch.zeros(len(self.active), dtype=torch.float64, device=self.device)
        started = time.perf_counter() - self.wall_time
        self.net.train()
        tick = time.perf_counter()
        while self.active and self.iteration < self.total:
            batches = [next(m.batches) for m in self.active]
            x = _stack_batches([x for x, _ in batches], self.channels_last)
            y = torch.stack([y for _, y in batches])
            lrs = [learning_rate(m.config.trainer, self.iteration, self.total, warming_up=m.warmup.active)
                   for m in self.active]
            self._set_lr(lrs)
            params = list(self.stack.params.values())
            with self.autocast:
                logits, losses = self._step_fn(self.stack.params, self.stack.buffers, x, y)
            grads = torch.autograd.grad(losses.sum(), params)
            self.iteration += 1
            for m in self.active:
                m.pos.iteration = self.iteration
            if self.iteration % t.grad_norm_every == 0:
                self._add_grad_norms(window, grads)
            self.stack.sgd_step(grads, self._lr, self._wd, self._momentum, t.nesterov)
            wrong = (logits.argmax(-1) != y).sum(-1)
            window.add(losses.detach(), wrong, B)

            if any(m.warmup.active for m in self.active):
                warm_wrong += wrong
                for j, m in enumerate(self.active):
                    c = m.config.trainer
                    if m.warmup.needs_check(c, self.iteration):
                        m.warmup.update(c, self.iteration, warm_wrong[j].item() / (c.warmup.check_every * B))
                        warm_wrong[j] = 0
            check = self.iteration % DIVERGENCE_CHECK_EVERY == 0
            finite = torch.isfinite(window.loss).tolist() if check else [True] * len(self.active)
            at_eval = self.iteration % self.eval_every == 0 or self.iteration == self.total
            if not (at_eval or not all(finite)):
                continue

            _sync(self.device)
            window.train_seconds += time.perf_counter() - tick
            metrics = [_window_metrics(window.member(j), m.pos, self.batches_per_epoch, lrs[j], started)
                       for j, m in enumerate(self.active)]
            ended = [j for j, m in enumerate(metrics) if not (finite[j] and math.isfinite(m["train_loss"]))]
            for j in ended:
                self._diverged(self.active[j], metrics[j])
            if at_eval:
                self._evaluation_point([(m, metrics[j]) for j, m in enumerate(self.active) if j not in ended])
            after_reports()
            if ended:
                keep = [j for j in range(len(self.active)) if j not in ended]
                self._drop(keep, window)
                warm_wrong = warm_wrong[torch.tensor(keep, device=self.device)]
            if at_eval:
                window.reset()
                self.net.train()
            tick = time.perf_counter()
        return [m.result or TrainResult(Status.FINISHED, m.pos.history, m.pos.history[-1].get(LAYER_RESPONSES))
                for m in self.members]

    def _evaluation_point(self, members: list[tuple[_Member, dict]]) -> None:
        """Evaluate the stack; per member: metrics, checkpoint, then report (the order ``train`` keeps)."""
        t = self.t
        errors = _evaluate(self._forward_eval, self.net, self.val_data, self.test_data, t.eval_batch_size,
                           self.autocast)
        finished = self.iteration == self.total
        if finished or self.checkpoint_dir is not None:  # the plain copies serve checkpoints and responses
            for j, m in enumerate(self.active):
                self.stack.unstack_into(j, m.model, m.optimizer)
        for member, metrics in members:
            position = self.active.index(member)
            metrics |= {key: values[position] for key, values in errors.items()}
            metrics[STATUS] = Status.RUNNING
            if finished:
                responses = layer_responses(member.model, self.test_data or self.val_data, t.eval_batch_size,
                                            self.autocast)
                metrics |= {STATUS: Status.FINISHED, LAYER_RESPONSES: responses}
            member.pos.history.append(metrics)
            member.pos.wall_time = metrics["wall_time"]
            if self.checkpoint_dir is not None:
                _save_checkpoint(member_dir(self.checkpoint_dir, member.index), member.model, member.optimizer,
                                 member.pos, member.warmup)
        for member, metrics in members:
            member.report(metrics)

    def _diverged(self, member: _Member, metrics: dict) -> None:
        metrics[STATUS] = Status.DIVERGED
        member.pos.history.append(metrics)
        member.result = TrainResult(Status.DIVERGED, member.pos.history)
        if self.checkpoint_dir is not None:  # marks the member as ended for a resumed group
            _save_checkpoint(member_dir(self.checkpoint_dir, member.index), member.model, member.optimizer,
                             member.pos, member.warmup)
        member.report(metrics)

    def _drop(self, keep: list[int], window: _FusedWindow) -> None:
        """Carry on with the members at positions ``keep`` only."""
        self.active = [self.active[j] for j in keep]
        if not self.active:
            return
        self.stack = self.stack.select(keep)
        self._static_inputs()
        window.select(torch.tensor(keep, device=self.device))
        self._hyper()

    # -- helpers ----------------------------------------------------------------------------------------

    def _static_inputs(self) -> None:
        """Compiled: the stack's tensors are inputs whose address stays put, as a module's parameters and buffers
        are. CUDA graphs (``compile_mode=reduce-overhead``) replay a function only when every input it mutates
        is such (the step updates the BN buffers in place); otherwise Inductor skips them for the whole run."""
        if self.t.compile and self.stack is not None:
            for tensor in (*self.stack.params.values(), *self.stack.buffers.values()):
                torch._dynamo.mark_static_address(tensor)

    def _hyper(self) -> None:
        """Per-element weight decay and momentum of the active members; the lr is set per step."""
        if not self.active:
            return
        per_member = lambda key: torch.tensor([getattr(m.config.trainer, key) for m in self.active],  # noqa: E731
                                              dtype=self.stack.flat.dtype, device=self.device)
        self._wd = self.stack.per_element(per_member("weight_decay"))
        self._momentum = self.stack.per_element(per_member("momentum"))
        self._lrs: list[float] | None = None

    def _set_lr(self, lrs: list[float]) -> None:
        """Per-element lr, rebuilt only when some member's lr changed (no device sync on CUDA)."""
        if lrs == self._lrs:
            return
        values = torch.tensor(lrs, dtype=self.stack.flat.dtype)
        if self.device.type == "cuda":
            values = values.pin_memory()
        self._lr = self.stack.per_element(values.to(self.device, non_blocking=True))
        self._lrs = lrs

    def _add_grad_norms(self, window: _FusedWindow, grads: Sequence[torch.Tensor]) -> None:
        """Per member and part: the 2-norm of the part's gradients, as ``train`` takes it."""
        for part, indices in self.parts.items():
            norms = [torch.nn.utils.get_total_norm([grads[i][k] for i in indices]) for k in range(len(self.active))]
            window.grad_norms[part] += torch.stack(norms).double()
        window.grad_samples += 1


def _part_params(model) -> dict[str, list[int]]:
    """Part name -> positions of its parameters in ``model.named_parameters()`` order."""
    position = {id(p): i for i, p in enumerate(model.parameters())}
    return {name: [position[id(p)] for p in module.parameters()] for name, module in model.parts().items()}


def _stack_batches(xs: list[torch.Tensor], channels_last: bool) -> torch.Tensor:
    """K batches (B, C, H, W) -> (B, K, C, H, W); channels_last: laid out as NHWC with K*C channels."""
    b, c, h, w = xs[0].shape
    if channels_last:
        out = xs[0].new_empty(b, h, w, len(xs), c).permute(0, 3, 4, 1, 2)
    else:
        out = xs[0].new_empty(b, len(xs), c, h, w)
    for k, x in enumerate(xs):
        out[:, k] = x
    return out
