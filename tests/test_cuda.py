"""The CUDA path: skipped without a GPU; ``scripts/gpu_check.sh`` runs these with ``pytest -m cuda``.

Tolerances are looser than on the CPU: cuDNN picks different algorithms for a grouped conv (fused)
and a plain one, and bf16 rounds at 8 bits of mantissa. fp32 is IEEE fp32 here, not cuDNN's default TF32.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_fused import assert_same_run, tiny

from ablate.fused import train_fused
from ablate.trainer import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda(seed: int = 3, **trainer):
    return tiny(seed, **({"device": "cuda", "deterministic": True} | trainer))


@pytest.fixture(autouse=True)
def ieee_fp32_convs():
    """cuDNN runs fp32 convolutions as TF32 (10-bit mantissa) by default on Ampere and later GPUs; these tests
    hold CUDA fp32 to the CPU's figures, so they ask for IEEE fp32 (conv and RNN alike: PyTorch refuses a mix)."""
    cudnn = torch.backends.cudnn
    before = cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision
    cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "ieee"
    yield
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = before


def run(config):
    seen = []
    train(config, seen.append)
    return seen


def test_cuda_fp32_follows_the_cpu_run():
    on_cpu, on_gpu = run(tiny(3, iterations=10)), run(cuda(3, iterations=10))
    assert_same_run(on_gpu, on_cpu, loss_rtol=1e-4, grad_norm_rtol=5e-2)


def test_deterministic_cuda_runs_repeat_to_the_bit():
    """trainer.deterministic on CUDA: cuBLAS's fixed workspace (set by ablate.trainer on import) lets the linear
    layer run under torch.use_deterministic_algorithms, and the run repeats to the bit."""
    first, second = run(cuda(3, iterations=10)), run(cuda(3, iterations=10))
    assert [m["train_loss"] for m in first] == [m["train_loss"] for m in second]
    assert [m["grad_norm/stem"] for m in first] == [m["grad_norm/stem"] for m in second]


def test_fused_members_report_what_each_reports_alone_on_cuda():
    configs = [cuda(3), cuda(5, lr=0.1, weight_decay=5e-4)]
    seen = [[], []]
    results = train_fused(configs, [s.append for s in seen])
    assert [r.status for r in results] == ["finished", "finished"]
    for config, reports in zip(configs, seen):
        assert_same_run(reports, run(config), loss_rtol=1e-4, grad_norm_rtol=5e-2)


def test_fast_path_bf16_channels_last_on_cuda_alone_and_fused():
    """The default GPU switches (bf16 autocast + channels_last) train alone and fused, near fp32."""
    fast = dict(bf16=True, channels_last=True, deterministic=False)
    reference = run(cuda(3))
    alone = run(cuda(3, **fast))
    seen = [[], [], []]
    results = train_fused([cuda(s, **fast) for s in (3, 4, 5)], [s.append for s in seen])
    assert [r.status for r in results] == ["finished"] * 3
    for reports in (alone, seen[0]):
        losses = [m["train_loss"] for m in reports]
        assert all(math.isfinite(x) for x in losses)
        assert losses == pytest.approx([m["train_loss"] for m in reference], rel=2e-2)
    assert torch.cuda.max_memory_allocated() > 0
