"""Training throughput and peak memory of the shared trainer against the conventional pipeline.

Two pipelines train the same network on the same uint8 images with the same batch size, each in its
own freshly spawned Python process (its own peak memory, threads and compile caches):

- **fast**: the real shared trainer, :func:`ablate.trainer.train`, on synthetic CIFAR-shaped data:
  the data resident on the device, whole-batch augmentation there, foreach SGD, and bf16 autocast /
  channels_last / torch.compile as its switches say (``None``: the trainer's own rule,
  :func:`ablate.device.speed_defaults`). ``eval_every = warmup_steps``, so the first report covers
  the warm-up and the later ones the timed steps; the trainer times training only, never evaluation.
- **conventional**: what most public reproductions do: a ``Dataset`` that pads, crops, flips,
  converts and normalises one image at a time (torchvision's ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``, written in numpy/torch because
  torchvision does not import everywhere), a ``DataLoader`` with ``BASELINE_WORKERS`` workers,
  shuffle and drop_last, fp32, NCHW, eager mode, ``torch.optim.SGD`` with its defaults.

Both warm up for ``warmup_steps`` untimed steps and are then timed over ``steps`` steps; on CUDA the
device is synchronised at both ends of every timed window. Peak memory: CUDA
``torch.cuda.max_memory_allocated`` of the training process; CPU the peak resident set size
(``ru_maxrss``) of the training process, interpreter and imports included (the same overhead on both
sides). The conventional pipeline's loader workers are separate processes: the largest one's peak RSS
is reported apart (it shares most of its pages with the training process, so the two do not add up).

``trials > 1`` also times that many trainer runs at once on the same device (small trials sharing
one GPU), each in its own process; ``fuse > 1`` times that many runs fused into one
(:func:`ablate.fused.train_fused`, seeds 0..K-1) against the same runs one after another, whose
throughput is the fast figure (they train the same shapes). Figures, the device they were taken on,
and what pays off when: docs/BENCHMARKS.md.

Example (ten seconds or so on a CPU: two processes start and import torch)::

    >>> result = run_bench(model="resnet20", device="cpu", batch_size=16, steps=2, warmup_steps=1)
    >>> sorted(k for k in result if k.endswith("images_per_s"))
    ['baseline_images_per_s', 'images_per_s']
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ablate.config import ConfigError, DataConfig, ModelSpec, TrainConfig, TrainerConfig
from ablate.data import load_dataset
from ablate.device import device_name, resolve_device, speed_defaults, sync
from ablate.fused import train_fused
from ablate.metrics import Status
from ablate.models import build_model, model_spec
from ablate.trainer import train

__all__ = [
    "BASELINE_WORKERS",
    "AugmentedImages",
    "bench_config",
    "format_bench",
    "isolated",
    "measure_fused",
    "measure_trainer",
    "run_bench",
]

BASELINE_WORKERS = 2  # conventional pipeline's DataLoader workers (PyTorch CIFAR-10 tutorial, kuangliu/pytorch-cifar)
TEST_IMAGES = 64  # the fast side's test set: the trainer evaluates it at every report, outside the timed windows
BARRIER_TIMEOUT_S = 900  # trials sharing a device: the longest wait for the others to finish warming up (compiling)
PAD = 4  # pixels of zero padding before the random crop (He et al. 2015, sec. 4.2)


# -- the configuration both pipelines share --------------------------------------------------------


def bench_config(
    model: str | ModelSpec, *, batch_size: int = 128, steps: int = 30, warmup_steps: int = 5, **trainer: Any
) -> TrainConfig:
    """The trainer config of a benchmark run: one epoch of synthetic 3x32x32 images covers every step.

    ``model``: a registered name (see :func:`ablate.models.list_models`) or any :class:`ModelSpec`;
    ``trainer``: further :class:`TrainerConfig` fields, e.g. ``device``, ``bf16``, ``channels_last``,
    ``compile``.

    ``warmup_steps + steps`` batches of images (so neither pipeline crosses an epoch boundary), no
    validation split, a ``TEST_IMAGES`` test set, a constant lr (the lr does not change the speed).
    """
    if steps < 1 or warmup_steps < 1:
        raise ConfigError(
            f"bench needs steps >= 1 and warmup_steps >= 1 (the first steps build kernels and are never "
            f"timed), got steps={steps}, warmup_steps={warmup_steps}"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    data = DataConfig(
        name="synthetic", synthetic_shape=(3, 32, 32), synthetic_train=batch_size * (warmup_steps + steps),
        synthetic_test=TEST_IMAGES, val_size=0,
    )
    trainer = TrainerConfig(
        batch_size=batch_size, iterations=warmup_steps + steps, eval_every=warmup_steps, schedule="constant",
        **trainer,
    )
    spec = model if isinstance(model, ModelSpec) else model_spec(model)
    return TrainConfig(model=spec, data=data, trainer=trainer)


# -- the conventional pipeline ---------------------------------------------------------------------


class AugmentedImages(Dataset):
    """Per-sample augmentation inside a ``Dataset``, as torchvision's transforms do it.

    Per image, in this order: zero-pad ``pad`` pixels on each side (H, W, C uint8, as torchvision's
    CIFAR10 stores images) -> random H x W crop -> horizontal flip with probability 1/2 -> float32
    (C, H, W) in 0..1 (``ToTensor``) -> subtract ``mean``, divide by ``std`` (``Normalize``). The random
    numbers come from torch's global generator, which DataLoader seeds per worker.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, *, mean, std, pad: int = PAD):
        self.images = x_uint8.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
        self.labels = y.tolist()
        self.pad = pad
        mean = torch.as_tensor(mean, dtype=torch.float32)
        self.mean = mean if mean.dim() == 3 else mean.view(-1, 1, 1)  # per pixel (C, H, W) or per channel
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        height, width, _ = image.shape
        p = self.pad
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        crop = padded[top : top + height, left : left + width]
        if torch.rand(()) < 0.5:
            crop = crop[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous().float().div(255)
        return (x - self.mean) / self.std, self.labels[index]


def _measure_baseline(config: TrainConfig, warmup_steps: int, steps: int, workers: int) -> dict[str, Any]:
    """Train the conventional pipeline for ``warmup_steps`` untimed then ``steps`` timed steps."""
    device = resolve_device(config.trainer.device)
    t = config.trainer
    splits = load_dataset(config.data)
    data = AugmentedImages(splits.train_x, splits.train_y, mean=splits.mean, std=splits.std)
    loader = DataLoader(
        data, batch_size=t.batch_size, shuffle=True, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed),
    )
    batches = iter(loader)  # starts the workers before CUDA is touched (forking after CUDA init is fragile)
    _reset_peak_memory(device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, in_channels=splits.in_channels, num_classes=splits.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    model.train()

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup_steps):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    del batches  # shuts the workers down, so their peak RSS is recorded below
    return {
        "images_per_s": steps * t.batch_size / seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else None,
    }


# -- the fast pipeline: the shared trainer itself --------------------------------------------------


def measure_trainer(config: TrainConfig, barrier=None) -> dict[str, Any]:
    """Run the shared trainer; the first report is the warm-up window, the rest the timed steps.

    ``barrier`` (trials sharing a device): every trial waits there at its first report, so their timed
    steps start together; the trainer's clock does not run while ``report`` does.
    """
    device = resolve_device(config.trainer.device)
    _reset_peak_memory(device)
    reports: list[dict] = []
    stamps: list[float] = []  # wall-clock time.time() after each report: comparable across processes

    def report(metrics: dict) -> None:
        if not reports and barrier is not None:
            barrier.wait()
        reports.append(metrics)
        stamps.append(time.time())

    start = time.perf_counter()
    result = train(config, report)
    wall = time.perf_counter() - start
    if result.status != Status.FINISHED:
        raise RuntimeError(f"bench: the shared trainer ended with status {result.status!r} on {config.model.name}")
    timed_images, timed_seconds = _timed(reports, config.trainer.batch_size)
    fast = speed_defaults(device)
    t = config.trainer
    return {
        "images_per_s": timed_images / timed_seconds,
        "untimed_seconds": wall - timed_seconds,  # setup, warm-up window, evaluations (and compiling them)
        "timed_images": timed_images,
        "timed_span": (stamps[0], stamps[-1]),  # from the end of warm-up to the last report, wall clock
        "peak_memory_mb": _peak_memory_mb(device),
        "bf16": fast if t.bf16 is None else t.bf16,
        "channels_last": fast if t.channels_last is None else t.channels_last,
        "cudagraph_skips": _cudagraph_skips(t, device),
    }


def _cudagraph_skips(t: TrainerConfig, device: torch.device) -> int | None:
    """Compiled with CUDA graphs on CUDA: how often Inductor ran a graph without them (0: they replayed)."""
    if not (t.compile and t.compile_mode == "reduce-overhead" and device.type == "cuda"):
        return None
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def _timed(reports: list[dict], batch: int) -> tuple[int, float]:
    """Images and training seconds of the report windows after the first (the warm-up window)."""
    windows, done = [], 0  # (images, training seconds) per report window
    for metrics in reports:
        images = (metrics["iteration"] - done) * batch
        windows.append((images, images / metrics["images_per_s"]))
        done = metrics["iteration"]
    return sum(n for n, _ in windows[1:]), sum(s for _, s in windows[1:])


def measure_fused(config: TrainConfig, fuse: int) -> dict[str, Any]:
    """``fuse`` runs of ``config`` (seeds 0..fuse-1) fused into one; all members' timed images per second."""
    device = resolve_device(config.trainer.device)
    _reset_peak_memory(device)
    reports: list[list[dict]] = [[] for _ in range(fuse)]
    configs = [config.model_copy(update={"seed": seed}) for seed in range(fuse)]
    results = train_fused(configs, [seen.append for seen in reports])
    if any(r.status != Status.FINISHED for r in results):
        raise RuntimeError(f"bench: fused runs ended with {[r.status for r in results]} on {config.model.name}")
    images, seconds = _timed(reports[0], config.trainer.batch_size)  # every member trains the same steps
    return {"images_per_s": fuse * images / seconds, "peak_memory_mb": _peak_memory_mb(device),
            "cudagraph_skips": _cudagraph_skips(config.trainer, device)}


# -- the benchmark ---------------------------------------------------------------------------------


def run_bench(
    *,
    model: str | ModelSpec = "resnet20",
    device: str = "auto",
    batch_size: int = 128,
    steps: int = 30,
    warmup_steps: int = 5,
    compile: bool = False,
    compile_mode: str = "default",
    bf16: bool | None = None,
    channels_last: bool | None = None,
    workers: int = BASELINE_WORKERS,
    trials: int = 1,
    fuse: int = 1,
) -> dict[str, Any]:
    """Steady-state images/s and peak memory of the shared trainer and of the conventional pipeline.

    Order: the fast path (eager first when ``compile``, so the compile cost and its break-even point
    can be computed from the two runs), then the conventional pipeline with ``workers`` loader
    workers; each in its own spawned process. ``bf16`` / ``channels_last``: ``None`` is the trainer's
    default (:func:`ablate.device.speed_defaults`). ``trials > 1``: then also that many trainer runs at
    once on the same device (small trials sharing one GPU), timed together after a common barrier.
    ``fuse > 1``: then also that many runs fused into one (``compile_mode``: ``reduce-overhead`` is
    torch.compile with CUDA graphs).
    """
    if trials < 1:
        raise ConfigError(f"trials must be >= 1 (runs sharing the device at once), got {trials}")
    if fuse < 1:
        raise ConfigError(f"fuse must be >= 1 (runs fused into one), got {fuse}")
    switches = dict(device=device, compile=compile, compile_mode=compile_mode, bf16=bf16, channels_last=channels_last)
    config = bench_config(model, batch_size=batch_size, steps=steps, warmup_steps=warmup_steps, **switches)
    resolved = resolve_device(device)
    load = os.getloadavg()[0]
    eager_config = config.model_copy(update={"trainer": config.trainer.model_copy(update={"compile": False})})
    eager = isolated(measure_trainer, eager_config) if compile else None
    fast = isolated(measure_trainer, config)
    baseline = isolated(_measure_baseline, config, warmup_steps, steps, workers)
    result: dict[str, Any] = {
        "model": config.model.name,
        "device": str(resolved),
        "device_name": device_name(resolved),
        "threads": torch.get_num_threads(),
        "load_average": round(load, 2),  # 1-minute load before the run: a busy machine lowers both figures
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "images_per_s": fast["images_per_s"],
        "baseline_images_per_s": baseline["images_per_s"],
        "ratio": fast["images_per_s"] / baseline["images_per_s"],
        "memory": "cuda_max_allocated" if resolved.type == "cuda" else "peak_rss",
        "peak_memory_mb": fast["peak_memory_mb"],
        "baseline_peak_memory_mb": baseline["peak_memory_mb"],
        "baseline_worker_peak_rss_mb": baseline["worker_peak_rss_mb"],
        "baseline_workers": workers,
        "bf16": fast["bf16"],
        "channels_last": fast["channels_last"],
        "compile": compile,
        "compile_mode": compile_mode if compile else None,
        "cudagraph_skips": fast["cudagraph_skips"],
    }
    if eager is not None:
        result |= _compile_payoff(fast, eager, batch_size)
    if trials > 1:
        window = max(steps, warmup_steps)  # one warm-up and one timed window: no evaluation inside the timed span
        shared = bench_config(model, batch_size=batch_size, steps=window, warmup_steps=window, **switches)
        total = _concurrent_images_per_s(shared, trials)
        speedup = total / fast["images_per_s"]
        result |= {"trials": trials, "concurrent_images_per_s": total, "concurrent_speedup": speedup}
    if fuse > 1:
        fused = isolated(measure_fused, config, fuse)
        result |= {
            "fuse": fuse,
            "fused_images_per_s": fused["images_per_s"],
            "fused_speedup": fused["images_per_s"] / fast["images_per_s"],  # over the same runs one after another
            "fused_peak_memory_mb": fused["peak_memory_mb"],
            "fused_cudagraph_skips": fused["cudagraph_skips"],
        }
    return result


def _concurrent_images_per_s(config: TrainConfig, trials: int) -> float:
    """Images/s of ``trials`` trainer runs at once: all their timed images over the span they cover together."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=trials, mp_context=context) as pool:
        barrier = manager.Barrier(trials, timeout=BARRIER_TIMEOUT_S)
        runs = [r.result() for r in [pool.submit(measure_trainer, config, barrier) for _ in range(trials)]]
    start = min(r["timed_span"][0] for r in runs)
    end = max(r["timed_span"][1] for r in runs)
    return sum(r["timed_images"] for r in runs) / (end - start)


def _compile_payoff(compiled: dict, eager: dict, batch_size: int) -> dict[str, Any]:
    """Compile time, speed-up per step, and the number of steps after which compiling pays off.

    Compile time: the extra seconds the compiled run spent outside its timed steps (the warm-up window,
    where the training graphs compile, and the evaluations, where the inference graph compiles) over
    the eager run's.
    """
    compile_seconds = max(compiled["untimed_seconds"] - eager["untimed_seconds"], 0.0)
    saved_per_step = batch_size / eager["images_per_s"] - batch_size / compiled["images_per_s"]
    return {
        "eager_images_per_s": eager["images_per_s"],
        "compile_seconds": compile_seconds,
        "compile_speedup": compiled["images_per_s"] / eager["images_per_s"],
        "compile_break_even_steps": round(compile_seconds / saved_per_step) if saved_per_step > 0 else None,
    }


def format_bench(result: dict[str, Any]) -> str:
    """A short human-readable table of a :func:`run_bench` result."""
    switches = ", ".join(name for name in ("bf16", "channels_last", "compile") if result[name]) or "fp32, NCHW"
    if result.get("compile_mode") not in (None, "default"):
        switches += f" {result['compile_mode']}"
    unit = "MB allocated" if result["memory"] == "cuda_max_allocated" else "MB peak RSS"
    fast_name = f"shared trainer ({switches})"
    base_name = f"conventional ({result['baseline_workers']} workers, fp32, NCHW, eager)"
    lines = [
        f"{result['model']} on {result['device']} ({result['device_name']}, {result['threads']} threads, "
        f"load {result['load_average']}), batch {result['batch_size']}, "
        f"{result['steps']} timed steps after {result['warmup_steps']} warm-up steps",
        f"{'pipeline':<48} {'images/s':>10} {unit:>16}",
        f"{fast_name:<48} {result['images_per_s']:>10,.0f} {result['peak_memory_mb']:>16,.0f}",
        f"{base_name:<48} {result['baseline_images_per_s']:>10,.0f} {result['baseline_peak_memory_mb']:>16,.0f}",
        f"ratio: {result['ratio']:.2f}x",
    ]
    if result.get("baseline_worker_peak_rss_mb"):
        worker = result["baseline_worker_peak_rss_mb"]
        lines[-1] += f"  (each loader worker: up to {worker:,.0f} MB RSS more, mostly shared)"
    if "trials" in result:
        lines.append(
            f"{result['trials']} trials at once: {result['concurrent_images_per_s']:,.0f} images/s in all, "
            f"{result['concurrent_speedup']:.2f}x one trial"
        )
    if "fuse" in result:
        lines.append(
            f"{result['fuse']} runs fused: {result['fused_images_per_s']:,.0f} images/s in all, "
            f"{result['fused_speedup']:.2f}x the same runs one after another "
            f"({result['fused_peak_memory_mb']:,.0f} {unit})"
        )
    if "compile_seconds" in result:
        pays = result["compile_break_even_steps"]
        lines.append(
            f"torch.compile: {result['compile_seconds']:.1f} s to compile, {result['compile_speedup']:.2f}x per step "
            f"(eager {result['eager_images_per_s']:,.0f} images/s); "
            + (f"pays off after {pays:,} steps" if pays is not None else "never pays off here")
        )
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------------------------


def isolated(fn, *args):
    """``fn(*args)`` in a freshly spawned interpreter: its own peak memory, compile caches and threads."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory tensors held (allocator); CPU: this process's peak RSS (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
