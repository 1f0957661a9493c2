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

The loop, setup, evaluation, checkpoints and reports are :mod:`ablate.loop`'s, the same as ``train``'s;
this module is its vmap engine. Checkpoints: ``checkpoint_dir/member<i>/checkpoint.pt``, each in the
format ``train`` writes, so a member can also be resumed alone by ``train``. A member that diverged
leaves the marker ``member<i>/diverged.json`` (:mod:`ablate.checkpoint`, the rule of every run);
resuming the group leaves it ended.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ablate.config import FUSABLE_KEYS, ConfigError, TrainConfig, check_fusable, fuse_key
from ablate.loop import ReportCallback, Run, TrainResult, active_members, as_path, deterministic, prepare, run_members
from ablate.models import build_model

# FUSABLE_KEYS, fuse_key and check_fusable live in ablate.config (studies pack trials by them without torch)
__all__ = ["FUSABLE_KEYS", "VmapEngine", "check_fusable", "fuse_key", "member_dir", "train_fused"]


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
    member_dirs = lambda root: [None if root is None else member_dir(root, i) for i in range(len(configs))]  # noqa: E731
    with deterministic(configs[0].trainer.deterministic):
        run = prepare(configs, reports, checkpoint_dirs=member_dirs(as_path(checkpoint_dir)),
                      resume_dirs=member_dirs(as_path(resume_from)))
        return run_members(run, VmapEngine(run), after_reports or (lambda: None))


class VmapEngine:
    """The active members as one :class:`_Stack`, stepped by one vmapped forward and backward and one SGD step."""

    def __init__(self, run: Run):
        self.members = active_members(run)  # the plain copies: checkpoints and layer responses
        t = self.t = run.members[0].config.trainer
        self.device, self.channels_last, self.autocast = run.device, run.channels_last, run.autocast
        with torch.device("meta"):
            self.net = build_model(run.members[0].config.model, **run.dims)  # shapes only: functional_call supplies the tensors
        self.parts = _part_params(run.members[0].model)
        self.stack = _Stack.of([m.model for m in self.members], [m.optimizer for m in self.members]) if self.members else None
        self._static_inputs()
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

    # -- the engine -----------------------------------------------------------------------------------

    def step(self, batches, lrs, *, grad_norms):
        """Stack the batches, set the per-element lr, vmapped forward, one backward of the summed losses,
        sample gradient norms, one SGD step of the flat vector (see the module docstring)."""
        x = _stack_batches([x for x, _ in batches], self.channels_last)
        y = torch.stack([y for _, y in batches])
        self._set_lr(lrs)
        params = list(self.stack.params.values())
        with self.autocast:
            logits, losses = self._step_fn(self.stack.params, self.stack.buffers, x, y)
        grads = torch.autograd.grad(losses.sum(), params)
        norms = self._grad_norms(grads) if grad_norms else None
        self.stack.sgd_step(grads, self._lr, self._wd, self._momentum, self.t.nesterov)
        return losses.detach(), (logits.argmax(-1) != y).sum(-1), norms

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._eval_fn(self.stack.params, self.stack.buffers, x)

    def train_mode(self) -> None:
        self.net.train()

    def eval_mode(self) -> None:
        self.net.eval()

    def sync_members(self) -> None:
        for j, m in enumerate(self.members):
            self.stack.unstack_into(j, m.model, m.optimizer)

    def drop(self, keep: list[int]) -> None:
        self.members = [self.members[j] for j in keep]
        self.stack = self.stack.select(keep)
        self._static_inputs()
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
        if not self.members:
            return
        per_member = lambda key: torch.tensor([getattr(m.config.trainer, key) for m in self.members],  # noqa: E731
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

    def _grad_norms(self, grads: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per member and part: the 2-norm of the part's gradients, as ``train`` takes it."""
        return {part: torch.stack([torch.nn.utils.get_total_norm([grads[i][k] for i in indices])
                                   for k in range(len(self.members))]).double()
                for part, indices in self.parts.items()}


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
