"""The numbers of a benchmark row, each defined once, here.

A row's figures all derive from one peer's per-call timing (the median, min
and max of ``timing.time_calls``, in seconds), the configuration's FLOP
count and one measured peak.  ``DEFINITIONS`` is what ``results.json`` and
``results.md`` say about them; the functions below are how they are computed,
for the harness and for the pytest-benchmark suite in ``benchmarks/``.
"""

from __future__ import annotations

import math

import torch

from fusedrnn.cost_model import GATES  # the cells' gate counts

DEFINITIONS = {
    "ratio_vs_torch": "torch.nn median time / peer median time (> 1: faster than torch.nn)",
    "time_ms": "per call (forward, or forward+backward in train mode): median, min, max over samples",
    "us_per_step": "median time / T, in microseconds",
    "model_us_per_step": "the analytic model's estimate of us_per_step for fusedrnn's CUDA rows "
                         "(fusedrnn/cost_model.py, H100 inputs; docs/design.md, CUDA cost model)",
    "precision": "the arithmetic of the row's GEMMs (fusedrnn: this build's, fp32 following "
                 "torch's matmul TF32 flag on CUDA; torch.nn on CUDA: cuDNN's, following its TF32 flag)",
    "tflops": "FLOPs / median time; forward 2*G*B*H*(I_l+H)*T per layer and direction "
              "(LSTM G=4: 8*B*H*(I+H)*T; GRU G=3), train = 3x forward",
    "peak_mem_mb": "memory added by one call at its peak (env.memory_metric), MiB",
    "max_abs_diff_vs_torch": "max |peer output - torch.nn output| in the row's precision",
    "status": "ok | failed (correctness gate; not timed) | skipped (peer does not apply) | error",
}

# How ``peak_mem_mb`` is measured on each device (``timing.measure_peak_memory``).
# Memory an allocator already held before the call is not counted, so on the
# CPU the figure is a lower bound on the call's working set.
MEMORY_METRIC = {
    "cuda": "torch.cuda.max_memory_allocated() during one call (after reset_peak_memory_stats) "
            "minus torch.cuda.memory_allocated() before it",
    "cpu": "peak resident set during one call (VmHWM after clearing it via /proc/self/clear_refs, "
           "after malloc_trim) minus VmRSS before it; memory the allocator already held is not counted",
}


def rnn_flops(cell: str, T: int, B: int, I: int, H: int, layers: int = 1,
              bidirectional: bool = False, mode: str = "infer") -> int:
    """FLOPs of one call: forward ``2*G*B*H*(I_l+H)*T`` per layer and
    direction (``I_l`` is the layer's input size: I, then H or 2H); training
    (forward + backward) counts three times the forward."""
    D = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        in_size = I if layer == 0 else H * D
        total += D * 2 * GATES[cell] * B * H * (in_size + H) * T
    return total * (3 if mode == "train" else 1)


def time_ms(stats: dict) -> dict:
    """``{"median", "min", "max"}`` of one call, in milliseconds."""
    return {k: stats[k] * 1e3 for k in ("median", "min", "max")}


def us_per_step(seconds: float, T: int) -> float:
    return seconds * 1e6 / T


def tflops(flops: int, seconds: float) -> float:
    return flops / seconds / 1e12


def ratio_vs_torch(torch_seconds: float, peer_seconds: float) -> float:
    return torch_seconds / peer_seconds


def peak_mem_mb(nbytes: int) -> float:
    return nbytes / 2**20


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest ``|a - b|`` (in fp64); inf when the shapes differ or a NaN appears."""
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    d = (a.double() - b.double()).abs()
    if torch.isnan(d).any():
        return math.inf
    return d.max().item()


def finite_or_none(v):
    """JSON has no inf or NaN: such a float is written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
