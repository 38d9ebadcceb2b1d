"""An analytic model of the CUDA paths' time: microseconds per time step.

Nothing here has been measured on a GPU: every figure is an estimate from the
inputs in :data:`H100` (one table, H100 SXM) and the structure of the code
(launches and cuBLAS calls per step, bytes moved, FMAs per SM).  It exists to
steer the design until a GPU run measures the real thing; the harness prints
it next to the measured ``us/step`` of CUDA rows (``model us/step``), so that
one GPU run shows where the model is wrong.  docs/design.md, "CUDA cost
model", explains each term.

Paths (:data:`PATHS`):

* ``standard``            the step loop of csrc/layer/ as built today;
* ``persistent``          today's persistent forward (csrc/cuda/persistent.cuh),
                          with the standard backward in training;
* ``persistent-designed`` the designed persistent forward (W_hh in registers,
                          16-byte staging, one reduce-scatter, tensor cores for
                          16-bit types) and the designed persistent backward.

A step's time on the standard path is ``max(host, device)``: the host issues
launches and cuBLAS calls asynchronously, so whichever side is slower sets the
pace.  A persistent step is the device time of its slowest block plus the
grid barrier.  GEMMs over all steps (input projection, weight gradients) are
spread over the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # the cells' kGates (tested)
BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Figures:
    """The model's inputs (all estimates for an H100 SXM; none measured here)."""

    sms: int = 132
    clock_ghz: float = 1.755              # sustained SM clock under load
    # Host side (one CPU thread issuing work for one stream).
    launch_host_us: float = 2.5           # one of our kernel launches (params + cudaLaunchKernel)
    cublas_host_us: float = 5.0           # one ATen mm/addmm on CUDA (dispatch, heuristics, launch)
    aten_view_host_us: float = 1.0        # one host-side tensor op without a kernel (select())
    # Device side.
    kernel_min_us: float = 2.0            # a small kernel, launch latency to completion
    hbm_tb_s: float = 3.0                 # achievable HBM3 bandwidth (3.35 peak)
    l2_tb_s: float = 5.5                  # aggregate L2 -> SM bandwidth
    l2_latency_us: float = 0.25           # first bytes of a staged tile after the barrier
    grid_sync_us: float = 1.0             # cooperative grid.sync() over <= 132 blocks
    fp32_fma_per_clk_sm: int = 128        # CUDA-core FMAs per SM per clock
    fp64_fma_per_clk_sm: int = 64
    mio_warp_ops_per_clk_sm: float = 1.0  # warp-wide LDS.32 / SHFL per SM per clock
    # Dense GEMM peaks (TFLOP/s) and the fraction cuBLAS reaches on the big,
    # all-steps GEMMs (rows = T*B).
    tflops: tuple = (("float64", 67.0), ("float32", 67.0), ("tf32", 494.0),
                     ("bfloat16", 989.0), ("float16", 989.0))
    gemm_efficiency: float = 0.6
    # A per-step GEMM (B rows) is bound by reading W from L2; at large B by
    # FLOPs at this lower efficiency (small tiles).
    small_gemm_efficiency: float = 0.35
    # Tensor-core WMMA in the persistent kernel, as a fraction of the peak.
    wmma_efficiency: float = 0.5

    def peak_tflops(self, mode: str) -> float:
        return dict(self.tflops)[mode]

    def clock_hz(self) -> float:
        return self.clock_ghz * 1e9


H100 = Figures()
PATHS = ("standard", "persistent", "persistent-designed")


# ------------------------------------------------------- what the code does

def gemm_mode(dtype: str, allow_tf32: bool, half_on_tensor_cores: bool) -> str:
    """The arithmetic of a GEMM the standard path runs for ``dtype``: the
    dtype itself, ``tf32`` for fp32 under torch's TF32 flag, or ``float32``
    (CUDA cores) for a 16-bit dtype converted to fp32 first."""
    if dtype in ("bfloat16", "float16"):
        return dtype if half_on_tensor_cores else "float32"
    if dtype == "float32" and allow_tf32:
        return "tf32"
    return dtype


@dataclass(frozen=True)
class StepWork:
    """Host and device work of one step of the standard loop (one layer,
    one direction), from csrc/layer/forward.cpp and backward.cpp."""

    kernels: int       # pointwise kernel launches
    gemms: int         # per-step cuBLAS calls (ATen mm/addmm)
    host_views: int    # host-side tensor ops without a kernel (select())


# The standard loop as built: per step, forward and backward; `lengths`
# (packed sequences) and `projected` (proj_size > 0) change the count.
# tests/test_cost_model.py checks `kernels` against the SIMT runtime's launch
# counts and `gemms` against the profiler's aten::mm/addmm events.
def standard_forward_work(cell: str, projected: bool = False) -> StepWork:
    if cell == "lstm" and projected:
        return StepWork(kernels=2, gemms=2, host_views=0)
    return StepWork(kernels=1, gemms=1, host_views=0)


def standard_backward_work(cell: str, lengths: bool = False, projected: bool = False) -> StepWork:
    """One fused kernel and one GEMM per step; a projected LSTM composes its
    steps (accumulate, backward, carry with lengths; two GEMMs, two select())."""
    if cell == "lstm" and projected:
        return StepWork(kernels=3 if lengths else 2, gemms=2, host_views=2)
    return StepWork(kernels=1, gemms=1, host_views=0)


# ------------------------------------------------------------ the terms

def _gemm_flops_us(flops: float, mode: str, fig: Figures, efficiency: float) -> float:
    return flops / (fig.peak_tflops(mode) * 1e12 * efficiency) * 1e6


def per_step_gemm_device_us(B: int, K: int, N: int, dtype: str, mode: str, fig: Figures) -> float:
    """(B x K) @ (K x N) with W (N x K) read from L2 every step."""
    weight_us = N * K * BYTES[dtype if mode != "float32" else "float32"] / (fig.l2_tb_s * 1e12) * 1e6
    flops_us = _gemm_flops_us(2.0 * B * K * N, mode, fig, fig.small_gemm_efficiency)
    return fig.kernel_min_us + max(weight_us, flops_us)


def pointwise_device_us(nbytes: float, fig: Figures) -> float:
    return fig.kernel_min_us + nbytes / (fig.hbm_tb_s * 1e12) * 1e6


def standard_step_us(cell: str, B: int, H: int, dtype: str, mode: str, work: StepWork,
                     pointwise_bytes: float, fig: Figures) -> dict:
    host = (work.kernels * fig.launch_host_us + work.gemms * fig.cublas_host_us
            + work.host_views * fig.aten_view_host_us)
    G = GATES[cell]
    device = work.gemms * per_step_gemm_device_us(B, H, G * H, dtype, mode, fig)
    device += work.kernels * pointwise_device_us(pointwise_bytes / max(work.kernels, 1), fig)
    return {"host_us": host, "device_us": device, "step_us": max(host, device)}


def _compute_bytes(dtype: str) -> int:
    """Bytes of an element of state/gates the step kernels read and write."""
    return 4 if dtype in ("bfloat16", "float16") else BYTES[dtype]


def standard_forward_step_us(cell: str, B: int, H: int, dtype: str, mode: str, save: bool,
                             fig: Figures = H100) -> dict:
    G, e = GATES[cell], _compute_bytes(dtype)
    # xproj + hh read; h, c (state), output written; gates and cells saved.
    nbytes = B * H * e * (2 * G + 3 + ((G + 1) if save else 0))
    return standard_step_us(cell, B, H, dtype, mode, standard_forward_work(cell), nbytes, fig)


def standard_backward_step_us(cell: str, B: int, H: int, dtype: str, mode: str,
                              fig: Figures = H100) -> dict:
    G, e = GATES[cell], _compute_bytes(dtype)
    # grad_out, dh, dc, saved gates/cells, c_prev read; d_gates, dh, dc written.
    nbytes = B * H * e * (2 * G + 8)
    return standard_step_us(cell, B, H, dtype, mode, standard_backward_work(cell), nbytes, fig)


def _persistent_grid(cell: str, H: int, fig: Figures) -> tuple:
    """(blocks, hidden units per block) of the persistent kernels' plan."""
    units = math.ceil(H / fig.sms)
    return math.ceil(H / units), units


def persistent_forward_today_us(cell: str, B: int, H: int, dtype: str,
                                fig: Figures = H100) -> dict:
    """Today's kernel: W and h both from shared memory (G + 4 loads per 4G
    FMAs), an 80-shuffle butterfly per warp task, h staged with scalar loads
    that do not overlap compute.  The shared-memory/shuffle pipe (MIO) of the
    busiest SM bounds it, then the staging and the barrier."""
    G, e = GATES[cell], BYTES["float32" if dtype in ("bfloat16", "float16") else dtype]
    blocks, units = _persistent_grid(cell, H, fig)
    tasks = units * math.ceil(B / 4)               # (unit, group of 4 rows) per warp
    loads_per_task = math.ceil(H / 32) * (G + 4)   # per lane: G weights + 4 h values per k
    shuffles_per_task = 80
    mio_clk = tasks * (loads_per_task + shuffles_per_task) / fig.mio_warp_ops_per_clk_sm
    compute = mio_clk / fig.clock_hz() * 1e6
    stage = blocks * B * H * e / (fig.l2_tb_s * 1e12) * 1e6
    step = compute + stage + fig.l2_latency_us + fig.grid_sync_us
    return {"compute_us": compute, "stage_us": stage, "barrier_us": fig.grid_sync_us,
            "step_us": step}


def persistent_backward_today_us(cell: str, B: int, H: int, dtype: str,
                                 fig: Figures = H100) -> dict:
    """Today's backward kernel (fp32/fp64): the forward's structure with one
    "gate" of length G*H, the block's column slice of W_hh and every block's
    staged gate gradients (B x G*H: G times the forward's operand) both read
    from shared memory (1 + 4 loads per 4 FMAs), a 20-shuffle butterfly per
    warp task, staging that does not overlap compute."""
    G, e = GATES[cell], BYTES[dtype]
    blocks, units = _persistent_grid(cell, H, fig)
    tasks = units * math.ceil(B / 4)
    loads_per_task = math.ceil(G * H / 32) * (1 + 4)
    shuffles_per_task = 4 * 5
    mio_clk = tasks * (loads_per_task + shuffles_per_task) / fig.mio_warp_ops_per_clk_sm
    compute = mio_clk / fig.clock_hz() * 1e6
    stage = blocks * B * G * H * e / (fig.l2_tb_s * 1e12) * 1e6
    step = compute + stage + fig.l2_latency_us + fig.grid_sync_us
    return {"compute_us": compute, "stage_us": stage, "barrier_us": fig.grid_sync_us,
            "step_us": step}


def _engine_step_us(cell: str, B: int, H: int, dtype: str, staged_width: int,
                    fig: Figures) -> dict:
    """One step of the designed engines: each block multiplies its (<= 32 x K)
    slice of W_hh, held in registers, by a staged operand of B x K read from
    L2 with 16-byte copies, double-buffered so that staging overlaps the
    previous tile's compute; one reduce-scatter; then the barrier."""
    G = GATES[cell]
    blocks, units = _persistent_grid(cell, H, fig)
    fmas = G * units * H * B                        # per block (forward and backward alike)
    half = dtype in ("bfloat16", "float16")
    if half:
        tc_fma_per_s = fig.peak_tflops(dtype) * 1e12 / 2 / fig.sms * fig.wmma_efficiency
        compute = fmas / tc_fma_per_s * 1e6
    else:
        per_clk = fig.fp64_fma_per_clk_sm if dtype == "float64" else fig.fp32_fma_per_clk_sm
        compute = fmas / (per_clk * fig.clock_hz()) * 1e6
    stage = blocks * B * staged_width * BYTES[dtype] / (fig.l2_tb_s * 1e12) * 1e6
    step = max(compute, stage) + fig.l2_latency_us + fig.grid_sync_us
    return {"compute_us": compute, "stage_us": stage, "barrier_us": fig.grid_sync_us,
            "step_us": step}


def persistent_forward_designed_us(cell: str, B: int, H: int, dtype: str,
                                   fig: Figures = H100) -> dict:
    """Each block stages all of h (B x H) every step."""
    return _engine_step_us(cell, B, H, dtype, H, fig)


def persistent_backward_designed_us(cell: str, B: int, H: int, dtype: str,
                                    fig: Figures = H100) -> dict:
    """Block k owns hidden units: dh[:, own] = d_gates (B x G*H) @ W_hh[:, own],
    so it stages every block's gate gradients (G times the forward's operand)
    and keeps the (G*H x U) column slice of W_hh in registers."""
    return _engine_step_us(cell, B, H, dtype, GATES[cell] * H, fig)


# ------------------------------------------------------- GEMMs over all steps

def all_steps_gemm_us(cell: str, T: int, B: int, I: int, H: int, mode: str, train: bool,
                      fig: Figures) -> float:
    """Input projection (forward); input and weight gradients (backward)."""
    G = GATES[cell]
    rows = T * B
    flops = 2.0 * rows * I * G * H
    if train:
        flops += 2.0 * rows * I * G * H      # d input
        flops += 2.0 * rows * I * G * H      # d w_ih
        flops += 2.0 * rows * H * G * H      # d w_hh
    return _gemm_flops_us(flops, mode, fig, fig.gemm_efficiency)


# ----------------------------------------------------------------- a call

def estimate(cell: str, mode: str, dtype: str, T: int, B: int, I: int, H: int,
             layers: int = 1, bidirectional: bool = False, path: str = "standard",
             allow_tf32: bool = False, half_on_tensor_cores: bool = False,
             fig: Figures = H100) -> dict:
    """Modelled time of one call (one forward, or forward + backward for
    ``mode == "train"``), split into its terms; ``us_per_step`` = total / T
    as the harness reports it."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r} (choose from {PATHS})")
    train = mode == "train"
    gmode = gemm_mode(dtype, allow_tf32, half_on_tensor_cores or path == "persistent-designed")
    D = 2 if bidirectional else 1
    terms = {"forward_step_us": 0.0, "backward_step_us": 0.0, "gemm_us": 0.0}
    for layer in range(layers):
        in_size = I if layer == 0 else H * D
        for _ in range(D):
            terms["forward_step_us"] += _forward_step(cell, B, H, dtype, gmode, train, path, fig)
            if train:
                terms["backward_step_us"] += _backward_step(cell, B, H, dtype, gmode, path, fig)
            terms["gemm_us"] += all_steps_gemm_us(cell, T, B, in_size, H, gmode, train, fig) / T
    total = T * (terms["forward_step_us"] + terms["backward_step_us"] + terms["gemm_us"])
    return {**terms, "path": path, "gemm_mode": gmode, "total_us": total,
            "us_per_step": total / T if T else 0.0}


def _forward_step(cell, B, H, dtype, gmode, save, path, fig) -> float:
    if path == "persistent":
        return persistent_forward_today_us(cell, B, H, dtype, fig)["step_us"]
    if path == "persistent-designed":
        return persistent_forward_designed_us(cell, B, H, dtype, fig)["step_us"]
    return standard_forward_step_us(cell, B, H, dtype, gmode, save, fig)["step_us"]


def _backward_step(cell, B, H, dtype, gmode, path, fig) -> float:
    if path == "persistent-designed":
        return persistent_backward_designed_us(cell, B, H, dtype, fig)["step_us"]
    if path == "persistent" and dtype in ("float32", "float64"):  # 16-bit: the step loop's
        return persistent_backward_today_us(cell, B, H, dtype, fig)["step_us"]
    return standard_backward_step_us(cell, B, H, dtype, gmode, fig)["step_us"]


def estimate_config(cfg, path: str = "standard", allow_tf32: bool = False,
                    half_on_tensor_cores: bool = False, fig: Figures = H100) -> dict:
    """:func:`estimate` for a bench :class:`~fusedrnn.bench.configs.Config`."""
    return estimate(cfg.cell, cfg.mode, cfg.dtype, cfg.T, cfg.B, cfg.I, cfg.H, cfg.layers,
                    cfg.bidirectional, path, allow_tf32, half_on_tensor_cores, fig)


def with_figures(**changes) -> Figures:
    """H100's table with some inputs changed (what-if, tests)."""
    return replace(H100, **changes)


# ------------------------------------------------------------- harness rows

# Whether the standard path's GEMMs take bf16/fp16 operands on the tensor
# cores (fp32 accumulation) rather than converting them to fp32 first: they
# do, for layers without projection (csrc/layer/plan.cpp).
HALF_GEMMS_NATIVE = True


def _short(mode: str) -> str:
    return {"float64": "fp64", "float32": "fp32", "tf32": "tf32", "bfloat16": "bf16",
            "float16": "fp16"}[mode]


def precision_mode(peer: str, cfg, tf32_matmul: bool, tf32_cudnn: bool) -> str | None:
    """The arithmetic of a row's GEMMs, as the harness prints it ("bf16 gemm,
    fp32 state"): fusedrnn's (this build; on CUDA fp32 follows torch's matmul
    TF32 flag) and cuDNN's (torch.nn on CUDA follows the cuDNN TF32 flag);
    None for other peers."""
    half = cfg.dtype in ("bfloat16", "float16")
    if peer == "fusedrnn":
        on_cuda = cfg.device == "cuda"
        mode = gemm_mode(cfg.dtype, on_cuda and tf32_matmul, on_cuda and HALF_GEMMS_NATIVE)
        if half and mode == "float32":
            return "fp32 gemm (converted)"
        return f"{_short(mode)} gemm" + (", fp32 state" if half else "")
    if peer == "torch.nn" and cfg.device == "cuda":
        mode = gemm_mode(cfg.dtype, tf32_cudnn, True)
        return f"cudnn {_short(mode)}"
    if peer == "torch.nn":
        return _short(cfg.dtype)
    return None


def model_us_per_step(peer: str, cfg, persistent: bool, tf32_matmul: bool) -> float | None:
    """The model's us/step for a fusedrnn row on CUDA (None otherwise), on
    the path the op takes (``persistent``: the ops' plan, under ``path="persistent"``)."""
    if peer != "fusedrnn" or cfg.device != "cuda":
        return None
    path = "persistent" if persistent else "standard"
    return estimate_config(cfg, path, tf32_matmul, HALF_GEMMS_NATIVE)["us_per_step"]


def choose_path(cell: str, mode: str, dtype: str, T: int, B: int, I: int, H: int,
                allow_tf32: bool = False, fig: Figures = H100) -> str:
    """The automatic rule between the built paths, from the model: the
    persistent forward where it is estimated faster than the standard step
    loop. fusedrnn.ops calls it under the opt-in mode
    ``"model"``; the default keeps the standard path until a GPU run confirms
    the model."""
    def cost(path):
        return estimate(cell, mode, dtype, T, B, I, H, path=path, allow_tf32=allow_tf32,
                        half_on_tensor_cores=HALF_GEMMS_NATIVE, fig=fig)["total_us"]
    return "persistent" if cost("persistent") < cost("standard") else "standard"
