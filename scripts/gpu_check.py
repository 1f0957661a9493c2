"""The whole GPU path, checked and measured in one call: ``bash scripts/gpu_check.sh`` (docs/BENCHMARKS.md).

For a session lent a CUDA machine: within ``--budget`` seconds (default 450, under the 8 minutes the
check must take) it runs, each item in its own process group with a timeout, what the targets need first:

1. ``tests``: the tests that need CUDA (``pytest -m cuda``: ``tests/test_data.py``, ``tests/test_cuda.py``);
2. ``ablate bench`` eager for resnet20 (with 4 co-located trials and 4 fused runs) and resnet110 (with
   4 fused runs), each against the conventional pipeline on the same GPU;
3. ``ablate bench --compile --compile-mode reduce-overhead`` (torch.compile with CUDA graphs) for
   resnet110: launching 110 layers' kernels one by one leaves eager mode short of 20,000 images/s;
4. a short real-data run: ResNet-20, one epoch of Fashion-MNIST, alone and 4 seeds fused;
5. resnet20 compiled, resnet56 eager, 4 fused resnet20 runs compiled, resnet56 compiled.

Compiled items report whether CUDA graphs replayed (Inductor's count of functions run without them).

An item that fails or runs out of time is recorded as such and the next one runs; an item that cannot
finish in the time left is skipped. After every item the summary is rewritten (``gpu_check.json``
and ``gpu_check.md`` in ``--out``), so whatever has run is there even if the whole call is cut off.
The summary sets the figures against the issue's targets: ResNet-20 >= 10x the conventional
pipeline's images/s, ResNet-110 >= 20,000 images/s (H100), 4 co-located trials >= 3x one alone.

Only torch, numpy, pyyaml and pydantic are imported on this path (no Ray, MLflow or Optuna: the GPU
machines do not have them). On a machine without CUDA it says so and exits 0; ``--smoke`` runs every
item on the CPU with tiny settings instead, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["BUDGET_S", "TARGETS", "last_json", "launch", "main", "markdown", "plan", "summarise"]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's ablate first

BUDGET_S = 450  # seconds for all items (the check must finish within 8 minutes)
SMOKE_CAP_S = 900  # --smoke: seconds per item (a busy CPU starts a process in a minute)
FUSE = 4  # runs fused / trials co-located
FASHION_ROOTS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")  # carried copy first, then the system's
CUDA_TEST_FILES = ("tests/test_data.py", "tests/test_cuda.py")
TARGETS = {  # the targets on a GPU
    "resnet20_ratio": 10.0,  # ResNet-20 images/s over the conventional pipeline's
    "resnet110_images_per_s": 20_000.0,  # on an H100
    "colocated_speedup": 3.0,  # 4 trials sharing the GPU over one alone
}


def plan(*, smoke: bool) -> list[dict[str, Any]]:
    """The items in order: ``kind``, its arguments, ``need`` (seconds it must have left to start) and ``cap``."""
    device = "cpu" if smoke else "cuda"
    size = dict(batch_size=8, steps=1, warmup_steps=1) if smoke else dict(batch_size=128, steps=100, warmup_steps=10)
    compiled = dict(compile=True, compile_mode="reduce-overhead")

    def bench(model, need, cap, **extra):
        return {"kind": "bench", "args": dict(model=model, device=device, **size, **extra), "need": need, "cap": cap}

    tests = {"kind": "tests", "args": {}, "need": 20, "cap": 120}
    fashion = {"kind": "fashion", "args": dict(device=device, fuse=FUSE, smoke=smoke), "need": 30, "cap": 120}
    eager = [bench("resnet20", 40, 150, trials=FUSE, fuse=FUSE), bench("resnet110", 30, 120, fuse=FUSE)]
    eager56 = bench("resnet56", 20, 90)
    if smoke:  # compiling on a CPU takes minutes: the smoke run checks the eager path only, on a shared CPU
        return [item | {"need": 0, "cap": SMOKE_CAP_S} for item in (tests, *eager, fashion, eager56)]
    return [  # ResNet-110's 20,000 images/s takes CUDA graphs: compiled right after the eager figures
        tests, *eager, bench("resnet110", 200, 300, **compiled), fashion, bench("resnet20", 60, 200, **compiled),
        eager56,
        {"kind": "fused", "args": dict(model="resnet20", device=device, fuse=FUSE, **size, **compiled),
         "need": 60, "cap": 200},
        bench("resnet56", 80, 250, **compiled),
    ]


# -- items, each run in its own process (``--item``) ---------------------------------------------


def _run_item(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    if kind == "tests":
        return _tests()
    if kind == "bench":
        from ablate.perf.bench import run_bench

        return run_bench(**args)
    if kind == "fused":
        from ablate.perf.bench import isolated, measure_fused, bench_config

        fuse, model = args.pop("fuse"), args.pop("model")
        config = bench_config(model, **args)
        return {"model": model, "fuse": fuse, **isolated(measure_fused, config, fuse), **args}
    if kind == "fashion":
        return _fashion(**args)
    raise ValueError(f"unknown item {kind!r}")


def _tests() -> dict[str, Any]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed (scripts/gpu_check.sh installs it from .whl/)"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *CUDA_TEST_FILES]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "tail": lines[-30:]}


def _fashion(*, device: str, fuse: int, smoke: bool) -> dict[str, Any]:
    """ResNet-20, one epoch of Fashion-MNIST (synthetic images of its shape where the files are absent),
    alone and ``fuse`` seeds fused: final errors, images/s, seconds."""
    from ablate.config import DataConfig, TrainConfig, TrainerConfig
    from ablate.fused import train_fused
    from ablate.models import model_spec
    from ablate.trainer import train

    root = next((r for r in FASHION_ROOTS if Path(r, "train-images-idx3-ubyte.gz").exists()), None)
    data = dict(name="fashion-mnist", root=root, download=False) if root else dict(
        name="synthetic", synthetic_shape=(1, 28, 28), synthetic_train=60_000, synthetic_test=10_000)
    if smoke:
        data |= dict(train_size=512, test_size=256, val_size=128) if root else dict(
            synthetic_train=640, synthetic_test=256, val_size=128)
    config = TrainConfig(model=model_spec("resnet20"), data=DataConfig(**data),
                         trainer=TrainerConfig(epochs=1, batch_size=64 if smoke else 128, device=device))
    out: dict[str, Any] = {"data": root or "synthetic (Fashion-MNIST files not carried)", "epochs": 1}
    start = time.perf_counter()
    alone = train(config, lambda m: None).final
    out["alone"] = {k: alone.get(k) for k in ("train_error", "val_error", "test_error", "images_per_s")}
    out["alone"]["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    members = train_fused([config.model_copy(update={"seed": s}) for s in range(fuse)], [lambda m: None] * fuse)
    finals = [r.final for r in members]
    out["fused"] = {
        "members": fuse, "test_errors": [f.get("test_error") for f in finals],
        "images_per_s": sum(f["images_per_s"] for f in finals), "seconds": time.perf_counter() - start,
    }
    return out


# -- the driver ------------------------------------------------------------------------------------


def launch(item: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one item in a fresh interpreter (its own process group, killed whole on timeout)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--item", json.dumps({k: item[k] for k in ("kind", "args")})]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"status": "timeout", "seconds": time.perf_counter() - start, "error": f"killed after {timeout:.0f} s"}
    seconds = time.perf_counter() - start
    result = last_json(stdout) if process.returncode == 0 else None
    if result is None:
        said = stderr.strip() or f"exit status {process.returncode}, no JSON result on stdout"
        return {"status": "error", "seconds": seconds, "error": "\n".join(said.splitlines()[-25:])}
    return {"status": "ok", "seconds": seconds, "result": result}


def last_json(stdout: str) -> dict[str, Any] | None:
    """The item's result: the last stdout line that is a JSON object (a library may print lines after it)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "cpu_count": os.cpu_count(),
    }


def summarise(environment: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Every item's outcome plus the figures the issue asks for, each against its target."""
    benches = [i["result"] for i in items if i["kind"] == "bench" and i.get("status") == "ok"]

    def best(model, key):
        values = [b[key] for b in benches if b["model"] == model and key in b]
        return max(values) if values else None

    colocated = next((b["concurrent_speedup"] for b in benches if "concurrent_speedup" in b), None)
    figures = {
        "resnet20_ratio": best("resnet20", "ratio"),
        "resnet110_images_per_s": best("resnet110", "images_per_s"),
        "colocated_speedup": colocated,
    }
    targets = {key: {"measured": value, "target": TARGETS[key], "met": None if value is None else value >= TARGETS[key]}
               for key, value in figures.items()}
    fused = {f"{b['model']} eager": b["fused_speedup"] for b in benches if "fuse" in b}
    for item in items:  # compiled fused runs against the compiled single run of the same model
        single = [b["images_per_s"] for b in benches if b["compile"] and b["model"] == item["args"].get("model")]
        if item["kind"] == "fused" and item.get("status") == "ok" and single:
            fused[f"{item['args']['model']} compiled"] = item["result"]["images_per_s"] / single[0]
    return {"environment": environment, "targets": targets, "fused_speedup": fused, "items": items}


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    device = f"{env['device_name']} ({env['memory_gb']} GB)" if env["device_name"] else "no GPU (--smoke: CPU)"
    lines = [f"# GPU check: {device}, torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}, "
             f"{env['cpu_count']} CPUs", "",
             "| item | status | seconds | figures |", "|---|---|---:|---|"]
    for item in summary["items"]:
        lines.append(f"| {_label(item)} | {item.get('status')} | {item.get('seconds', 0):.0f} | {_figures(item)} |")
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for key, t in summary["targets"].items():
        shown = "-" if t["measured"] is None else f"{t['measured']:,.2f}"
        lines.append(f"| {key} >= {t['target']:,g} | {shown} | {t['met']} |")
    for name, speedup in summary["fused_speedup"].items():
        lines.append(f"| {name}: {FUSE} fused / one after another (HFTA: up to 15x) | {speedup:.2f} | - |")
    errors = [i for i in summary["items"] if i.get("status") in ("error", "timeout")]
    for item in errors:
        lines += ["", f"## {_label(item)}: {item['status']}", "```", item.get("error", ""), "```"]
    return "\n".join(lines) + "\n"


def _label(item: dict[str, Any]) -> str:
    args = item["args"]
    if item["kind"] in ("bench", "fused"):
        extra = " compile " + args["compile_mode"] if args.get("compile") else " eager"
        return f"{item['kind']} {args['model']}{extra}"
    return item["kind"]


def _figures(item: dict[str, Any]) -> str:
    r = item.get("result")
    if r is None:
        return item.get("error", "").splitlines()[-1][:120] if item.get("error") else item.get("reason", "")
    if item["kind"] == "tests":
        return r.get("summary") or r.get("skipped", "")
    if item["kind"] == "fused":
        return (f"{r['fuse']} fused: {r['images_per_s']:,.0f} img/s, {r['peak_memory_mb']:,.0f} MB"
                f"{_skips(r.get('cudagraph_skips'))}")
    if item["kind"] == "fashion":
        a, f = r["alone"], r["fused"]
        return (f"alone: test {a['test_error']:.4f}, {a['images_per_s']:,.0f} img/s, {a['seconds']:.0f} s; "
                f"{f['members']} fused: test {', '.join(f'{e:.4f}' for e in f['test_errors'])}, "
                f"{f['images_per_s']:,.0f} img/s, {f['seconds']:.0f} s")
    parts = [f"{r['images_per_s']:,.0f} img/s vs {r['baseline_images_per_s']:,.0f} ({r['ratio']:.2f}x)",
             f"{r['peak_memory_mb']:,.0f} MB"]
    if "compile_seconds" in r:
        parts.append(f"compile {r['compile_seconds']:.0f} s, {r['compile_speedup']:.2f}x eager")
    if "concurrent_speedup" in r:
        parts.append(f"{r['trials']} co-located {r['concurrent_speedup']:.2f}x")
    if "fused_speedup" in r:
        parts.append(f"{r['fuse']} fused {r['fused_speedup']:.2f}x{_skips(r.get('fused_cudagraph_skips'))}")
    return "; ".join(parts) + _skips(r.get("cudagraph_skips"))


def _skips(count: int | None) -> str:
    """Compiled with CUDA graphs: whether they replayed (Inductor counts each function it ran without them)."""
    if count is None:
        return ""
    return " (CUDA graphs replayed)" if count == 0 else f" (CUDA graphs skipped {count}x: see the log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run every item on the CPU with tiny settings")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all items")
    parser.add_argument("--out", default="reports/gpu_check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--item", help=argparse.SUPPRESS)  # internal: run one item, print its JSON
    args = parser.parse_args(argv)
    if args.item:
        item = json.loads(args.item)
        print(json.dumps(_run_item(item["kind"], item["args"]), default=str))
        return 0

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
              "nothing to check. Run it on a machine with a GPU (docs/BENCHMARKS.md), or --smoke for a CPU dry run.")
        return 0
    deadline = time.perf_counter() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment, done = _environment(), []
    for item in plan(smoke=args.smoke):
        left = deadline - time.perf_counter()
        if left < item["need"]:
            item |= {"status": "skipped", "reason": f"{left:.0f} s left of the budget"}
        else:
            print(f"gpu_check: {_label(item)} (up to {min(item['cap'], left):.0f} s)", flush=True)
            item |= launch(item, min(item["cap"], left))
        done.append(item)
        summary = summarise(environment, done)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(summary))
    print(markdown(summary))
    print(json.dumps({"targets": summary["targets"], "fused_speedup": summary["fused_speedup"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
