"""Benchmark harness for fusedrnn: ``python -m fusedrnn.bench``.

Times ``fusedrnn.LSTM`` / ``fusedrnn.GRU`` (and, where asked or available,
the pure-Python reference and FlashRNN) against ``torch.nn.LSTM`` /
``torch.nn.GRU`` with the same weights and inputs, on the shapes of
DESIGN.md section 4::

    python -m fusedrnn.bench --preset quick --device cpu --out bench-out
    python -m fusedrnn.bench --out bench-out            # the "default" preset

Every row is gated before it is timed: the peer's output, final states and
(in train mode) the gradients of the input, the initial states and every
parameter are compared with torch.nn; a peer that does not match is marked
``failed`` and is not timed.

Definitions used in the report (also written into ``results.json``):

* ``time_ms``: median, min and max over ``--reps`` samples of one call
  (forward, or forward+backward in train mode).  Each sample times
  ``calls_per_sample`` back-to-back calls (enough to fill
  ``--min-sample-ms``) and divides.  The peers alternate within every
  repetition, in a rotating order, so drift on a noisy machine hits all of
  them.  GPU: CUDA events with synchronisation; CPU: ``time.perf_counter``.
* ``us_per_step``: median time / T.
* ``tflops``: FLOPs / median time.  Forward FLOPs are
  ``2*G*B*H*(I_l+H)*T`` per layer and direction (G = 4 gates for LSTM, i.e.
  ``8*B*H*(I+H)*T``; G = 3 for GRU), training counts 3x forward.
* ``peak_mem_mb``: memory added by one call at its peak.  GPU:
  ``torch.cuda.max_memory_allocated()`` after a reset, minus the memory
  allocated before the call.  CPU: the process's peak resident set during
  the call (``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
  after ``malloc_trim``) minus the resident set before the call.  Memory
  the allocator already held is not counted, so on CPU this is a lower
  bound on the call's working set.
* ``ratio_vs_torch``: torch.nn median time / peer median time, so > 1 means
  faster than torch.nn (the torch.nn row itself is 1.0).
* ``max_abs_diff_vs_torch``: largest ``|peer - torch.nn|`` over the output
  tensor, in the row's precision.

The peers are pluggable: :func:`run` and :func:`main` take a list of
:class:`Peer` objects, so tests can inject a deliberately wrong kernel.
fusedrnn itself is imported lazily (inside :class:`FusedRNNPeer`), so the
harness keeps working, and reports an ``error`` row, while the package is
broken.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

SCHEMA_VERSION = 1
BASELINE = "torch.nn"

# --------------------------------------------------------------------------
# dtypes, shapes, configurations
# --------------------------------------------------------------------------

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
}
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
GATES = {"lstm": 4, "gru": 3}


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False


@dataclass(frozen=True)
class Config:
    """One benchmark configuration; each peer gives one row for it."""

    cell: str  # "lstm" | "gru"
    mode: str  # "train" | "infer"
    dtype: str  # canonical name, e.g. "float32"
    device: str  # "cpu" | "cuda"
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def flops(self) -> int:
        return rnn_flops(self.cell, self.T, self.B, self.I, self.H, self.layers,
                         self.bidirectional, self.mode)

    @property
    def id(self) -> str:
        s = f"{self.cell}-{self.mode}-{SHORT_DTYPE[self.dtype]}-T{self.T}-B{self.B}-I{self.I}-H{self.H}"
        if self.layers != 1:
            s += f"-L{self.layers}"
        if self.bidirectional:
            s += "-bi"
        return s

    @property
    def label(self) -> str:
        s = (f"{self.cell} {self.mode} {SHORT_DTYPE[self.dtype]} "
             f"T={self.T} B={self.B} I={self.I} H={self.H}")
        if self.layers != 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bi"
        return s

    def to_dict(self) -> dict:
        return asdict(self)


def rnn_flops(cell: str, T: int, B: int, I: int, H: int, layers: int = 1,
              bidirectional: bool = False, mode: str = "infer") -> int:
    """FLOPs of one call: forward ``2*G*B*H*(I_l+H)*T`` per layer and
    direction (LSTM: ``8*B*H*(I+H)*T``, GRU: ``6*B*H*(I+H)*T``); training
    (forward+backward) counts three times the forward."""
    D = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        in_size = I if layer == 0 else H * D
        total += D * 2 * GATES[cell] * B * H * (in_size + H) * T
    return total * (3 if mode == "train" else 1)


# --------------------------------------------------------------------------
# presets (DESIGN.md section 4)
# --------------------------------------------------------------------------

CPU_SHAPES = (Shape(100, 64, 256, 256), Shape(100, 16, 512, 512), Shape(200, 1, 128, 128))
FASTRNNS_SHAPE = Shape(100, 64, 512, 512)
LATENCY_SHAPE = Shape(100, 1, 512, 512)  # small-batch latency row (GPU default)


def _dedupe(shapes: Iterable[Shape]) -> tuple:
    seen, out = set(), []
    for s in shapes:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return tuple(out)


FLASHRNN_SHAPES = _dedupe(
    [Shape(1024, 16, 768, 768)]
    + [Shape(1024, b, 768, 768) for b in (2, 4, 8, 16, 32, 64, 128, 256)]
    + [Shape(t, 16, 768, 768) for t in (256, 512, 1024, 2048)]
)
CUDNN_SHAPES = tuple(Shape(100, b, h, h)
                     for h in (64, 128, 256, 512, 1024, 2048)
                     for b in (1, 4, 16, 64, 128))
# The CUDA kernels' acceptance grid (fp32 and bf16) and the persistent
# kernels' inference grid (T=1024).
CUDA_GRID_SHAPES = tuple(Shape(512, b, h, h) for h in (256, 512, 1024) for b in (1, 16, 64, 256))
PERSISTENT_SHAPES = tuple(Shape(1024, b, h, h)
                          for h in (256, 512, 768, 1024) for b in (1, 4, 16, 64))
GPU_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    cpu_shapes: tuple
    gpu_shapes: Optional[tuple] = None  # None: same as cpu_shapes
    cpu_dtypes: tuple = ("float32",)
    gpu_dtypes: tuple = GPU_DTYPES
    reps: dict = field(default_factory=lambda: {"cpu": 10, "cuda": 20})
    warmup: dict = field(default_factory=lambda: {"cpu": 2, "cuda": 5})

    def shapes(self, device: str) -> tuple:
        if device == "cuda" and self.gpu_shapes is not None:
            return self.gpu_shapes
        return self.cpu_shapes

    def dtypes(self, device: str) -> tuple:
        return self.gpu_dtypes if device == "cuda" else self.cpu_dtypes


PRESETS = {
    "quick": Preset(
        "quick", "a few small rows (under a minute on a 2-core CPU)",
        cpu_shapes=(Shape(32, 8, 64, 64), Shape(100, 4, 64, 128)),
        gpu_dtypes=("float32",),
        reps={"cpu": 7, "cuda": 10}, warmup={"cpu": 2, "cuda": 3},
    ),
    "default": Preset(
        "default",
        "CPU: the three CPU shapes of DESIGN.md 4; GPU: fastrnns default + small-batch latency row",
        cpu_shapes=CPU_SHAPES, gpu_shapes=(FASTRNNS_SHAPE, LATENCY_SHAPE),
    ),
    "cpu": Preset("cpu", "the CPU shapes of DESIGN.md 4", cpu_shapes=CPU_SHAPES),
    "fastrnns": Preset("fastrnns", "fastrnns default: T=100 B=64 I=H=512, 1 and 4 layers",
                       cpu_shapes=(FASTRNNS_SHAPE, Shape(100, 64, 512, 512, layers=4))),
    "cuda": Preset("cuda", "CUDA grid: T=512, B in 1..256, I=H in 256..1024 (fp32, bf16)",
                   cpu_shapes=CUDA_GRID_SHAPES, gpu_dtypes=("float32", "bfloat16")),
    "persistent": Preset("persistent", "persistent grid: T=1024, B in 1..64, I=H in 256..1024",
                         cpu_shapes=PERSISTENT_SHAPES),
    "flashrnn": Preset("flashrnn", "FlashRNN grid: H=768; B in 2..256 at T=1024; T in 256..2048 at B=16",
                       cpu_shapes=FLASHRNN_SHAPES),
    "cudnn": Preset("cudnn", "cuDNN boundary grid: T=100, I=H in 64..2048, B in 1..128",
                    cpu_shapes=CUDNN_SHAPES),
}


def make_configs(shapes: Sequence[Shape], device: str, dtypes: Sequence[str],
                 cells: Sequence[str] = ("lstm", "gru"),
                 modes: Sequence[str] = ("train", "infer")) -> list:
    return [Config(cell, mode, dtype, device, s.T, s.B, s.I, s.H, s.layers, s.bidirectional)
            for s in shapes for cell in cells for mode in modes for dtype in dtypes]


def preset_configs(preset: str, device: str, dtypes: Optional[Sequence[str]] = None,
                   cells: Sequence[str] = ("lstm", "gru"),
                   modes: Sequence[str] = ("train", "infer")) -> list:
    p = PRESETS[preset]
    return make_configs(p.shapes(device), device, dtypes or p.dtypes(device), cells, modes)


# --------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------


class Runner:
    """A built peer: ``forward(x, hx)`` with torch.nn's contract (time-major
    input, returns ``(output, h_n)`` or ``(output, (h_n, c_n))``) and the
    leaf tensors whose gradients the gate compares, by torch.nn's names."""

    def __init__(self, forward: Callable, params: dict, note: str = "",
                 prepare: Optional[Callable] = None):
        self.forward = forward
        self.params = dict(params)
        self.note = note
        self._prepare = prepare

    def prepare(self, x, hx) -> Callable[[], torch.Tensor]:
        """A no-argument callable for timing that returns the output tensor."""
        if self._prepare is not None:
            return self._prepare(x, hx)
        return lambda: self.forward(x, hx)[0]


class Peer:
    """An implementation to compare with torch.nn.  Subclass and override
    :meth:`build` (and :meth:`skip_reason` where it does not apply)."""

    name = "peer"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        return None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> Runner:
        raise NotImplementedError


def _build_dropin(cls, cfg: Config, baseline: torch.nn.Module) -> torch.nn.Module:
    m = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional)
    m = m.to(device=cfg.device, dtype=cfg.torch_dtype)
    m.load_state_dict(baseline.state_dict())
    m.train()
    return m


class ModulePeer(Peer):
    """A drop-in module class pair with torch.nn.LSTM/GRU's constructor and
    state_dict: built, then loaded with the baseline's ``state_dict``.

    ``resolve`` (called at build time) returns ``(lstm_cls, gru_cls, note)``;
    or give the classes directly."""

    def __init__(self, name: str, lstm=None, gru=None, resolve: Optional[Callable] = None,
                 note: str = ""):
        self.name = name
        self._lstm, self._gru, self._resolve, self._note = lstm, gru, resolve, note

    def build(self, cfg: Config, baseline: torch.nn.Module) -> Runner:
        if self._resolve is not None:
            lstm, gru, note = self._resolve()
        else:
            lstm, gru, note = self._lstm, self._gru, self._note
        cls = lstm if cfg.cell == "lstm" else gru
        if cls is None:
            raise RuntimeError(f"{self.name}: no {cfg.cell.upper()} class")
        m = _build_dropin(cls, cfg, baseline)
        return Runner(lambda x, hx: m(x, hx), dict(m.named_parameters()), note=note)


def _resolve_fusedrnn(module: str = "fusedrnn"):
    fr = importlib.import_module(module)
    lstm, gru = getattr(fr, "LSTM"), getattr(fr, "GRU")
    try:
        note = f"backend {fr.backend()}"
    except Exception as e:  # noqa: BLE001
        note = f"backend unknown ({type(e).__name__})"
    try:
        note += f" ({fr.build_info()})"
    except Exception:  # noqa: BLE001
        pass
    return lstm, gru, note


class FusedRNNPeer(ModulePeer):
    """The real ``fusedrnn.LSTM`` / ``fusedrnn.GRU``, imported at build time
    (``module`` exists so that tests can point it at a stand-in)."""

    def __init__(self, module: str = "fusedrnn"):
        super().__init__("fusedrnn", resolve=lambda: _resolve_fusedrnn(module))


def _load_reference():
    try:
        return importlib.import_module("fusedrnn.reference")
    except Exception:  # noqa: BLE001  (package __init__ broken: load the file itself)
        path = Path(__file__).with_name("reference.py")
        spec = importlib.util.spec_from_file_location("_fusedrnn_reference", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


class ReferencePeer(Peer):
    """``fusedrnn/reference.py``: the pure-Python oracle (slow, per-step torch ops)."""

    name = "reference"

    def build(self, cfg: Config, baseline: torch.nn.Module) -> Runner:
        ref = _load_reference()
        params = {n: p.detach().clone().requires_grad_(True) for n, p in baseline.named_parameters()}
        weights = [[params[n] for n in names] for names in baseline._all_weights]
        mode = cfg.cell.upper()

        def forward(x, hx):
            return ref.rnn(mode, x, hx, weights, num_layers=cfg.layers,
                           bidirectional=cfg.bidirectional)

        return Runner(forward, params, note="pure-Python oracle")


def _flashrnn_fn():
    """FlashRNN's ``flashrnn`` function, or None when it is not installed."""
    if importlib.util.find_spec("flashrnn") is None:
        return None
    for modname in ("flashrnn.flashrnn", "flashrnn"):
        try:
            fn = getattr(importlib.import_module(modname), "flashrnn", None)
        except Exception:  # noqa: BLE001
            continue
        if callable(fn):
            return fn
    return None


class FlashRNNPeer(Peer):
    """FlashRNN (``pip install flashrnn``), LSTM only, GPU only.  It takes the
    input projection ``W_ih x + b`` precomputed: the timed call excludes it
    (the gate computes it under autograd so gradients are comparable)."""

    name = "flashrnn"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        if _flashrnn_fn() is None:
            return "flashrnn: not installed"
        if cfg.device != "cuda":
            return "flashrnn: GPU only"
        if cfg.cell != "lstm":
            return "flashrnn: LSTM only here (its GRU is a different formulation)"
        if cfg.layers != 1 or cfg.bidirectional:
            return "flashrnn: one layer, one direction only"
        if cfg.dtype == "float64":
            return "flashrnn: no fp64"
        return None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> Runner:  # pragma: no cover (GPU + flashrnn)
        fn = _flashrnn_fn()
        T, B, H = cfg.T, cfg.B, cfg.H
        params = {n: p.detach().clone().requires_grad_(True) for n, p in baseline.named_parameters()}
        w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        b_ih, b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
        zero_b = torch.zeros(4, 1, H, device=cfg.device, dtype=cfg.torch_dtype)

        def project(x):
            return torch.nn.functional.linear(x, w_ih, b_ih + b_hh)  # (T, B, 4H), gates i,f,g,o

        def core(wx, h0, c0):
            Wx = wx.transpose(0, 1).reshape(B, T, 4, 1, H)  # BTGHD
            R = w_hh.view(4, 1, H, H)  # GHDP: gate, head, out, in
            states = torch.stack([h0[0], c0[0]]).view(2, B, 1, 1, H)
            h, last = fn(Wx=Wx, R=R, b=zero_b, states=states, function="lstm",
                         backend="cuda_fused", dtype=cfg.dtype)
            out = h[0].reshape(B, T, H).transpose(0, 1)
            return out, (last[0].reshape(1, B, H), last[1].reshape(1, B, H))

        def forward(x, hx):
            return core(project(x), *hx)

        def prepare(x, hx):
            with torch.no_grad():
                wx = project(x)
            wx.requires_grad_(x.requires_grad)

            def call():
                wx.grad = None
                return core(wx, *hx)[0]
            return call

        return Runner(forward, params, prepare=prepare,
                      note="input projection precomputed (not timed); backend cuda_fused")


def default_peers(device: str, reference: bool = False, flashrnn: bool = True) -> list:
    """The peers of a normal run (torch.nn, the baseline, is always there)."""
    peers: list = [FusedRNNPeer()]
    if reference:
        peers.append(ReferencePeer())
    if flashrnn and device == "cuda":
        peers.append(FlashRNNPeer())
    elif flashrnn and _flashrnn_fn() is None:
        peers.append(FlashRNNPeer())  # a "skipped: flashrnn: not installed" row
    return peers


# --------------------------------------------------------------------------
# inputs, evaluation and the correctness gate
# --------------------------------------------------------------------------


class Case:
    """Weights (torch.nn baseline) and inputs for one configuration, plus
    cached results of the baseline and of its higher-precision copy."""

    def __init__(self, cfg: Config, seed: int = 0):
        self.cfg = cfg
        dev, dt = cfg.device, cfg.torch_dtype
        torch.manual_seed(seed)
        cls = torch.nn.LSTM if cfg.cell == "lstm" else torch.nn.GRU
        base = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional)
        self.baseline = base.to(device=dev, dtype=dt).train()
        g = torch.Generator(device=dev).manual_seed(seed + 1)
        D, L = cfg.directions, cfg.layers

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, device=dev) * scale).to(dt)

        self.x = randn(cfg.T, cfg.B, cfg.I)
        self.h0 = randn(L * D, cfg.B, cfg.H, scale=0.5)
        self.c0 = randn(L * D, cfg.B, cfg.H, scale=0.5) if cfg.cell == "lstm" else None
        self.g_out = randn(cfg.T, cfg.B, D * cfg.H)
        self.g_h = randn(L * D, cfg.B, cfg.H)
        self.g_c = randn(L * D, cfg.B, cfg.H) if cfg.cell == "lstm" else None
        self._results: dict = {}

    @property
    def ref_dtype(self) -> Optional[torch.dtype]:
        """The precision of the gate's reference run (None for fp64 rows)."""
        if self.cfg.dtype == "float64":
            return None
        return torch.float64 if self.cfg.dtype == "float32" else torch.float32

    def inputs(self, dtype: Optional[torch.dtype] = None) -> dict:
        names = ("x", "h0", "c0", "g_out", "g_h", "g_c")
        return {n: (None if getattr(self, n) is None else
                    getattr(self, n) if dtype is None else getattr(self, n).to(dtype))
                for n in names}

    def hx(self):
        return (self.h0, self.c0) if self.cfg.cell == "lstm" else self.h0

    def baseline_runner(self) -> Runner:
        m = self.baseline
        return Runner(lambda x, hx: m(x, hx), dict(m.named_parameters()))

    def baseline_results(self, train: bool) -> dict:
        key = ("base", train)
        if key not in self._results:
            self._results[key] = evaluate(self.baseline_runner(), self.cfg.cell, self.inputs(), train)
        return self._results[key]

    def reference_results(self, train: bool) -> Optional[dict]:
        """torch.nn on the same (rounded) weights and inputs in higher precision."""
        if self.ref_dtype is None:
            return None
        key = ("ref", train)
        if key not in self._results:
            m = copy.deepcopy(self.baseline).to(self.ref_dtype)
            runner = Runner(lambda x, hx: m(x, hx), dict(m.named_parameters()))
            self._results[key] = evaluate(runner, self.cfg.cell, self.inputs(self.ref_dtype), train)
            del m
        return self._results[key]


def evaluate(runner: Runner, cell: str, inputs: dict, train: bool) -> dict:
    """Run ``runner`` once; returns output, final states and (train) the
    gradients of ``loss = <out, g_out> + <h_n, g_h> (+ <c_n, g_c>)`` with
    respect to the input, the initial states and every parameter."""
    x = inputs["x"].detach().clone().requires_grad_(train)
    h0 = inputs["h0"].detach().clone().requires_grad_(train)
    c0 = None
    if cell == "lstm":
        c0 = inputs["c0"].detach().clone().requires_grad_(train)
    for p in runner.params.values():
        p.grad = None
    with torch.set_grad_enabled(train):
        out, states = runner.forward(x, (h0, c0) if cell == "lstm" else h0)
    hn, cn = states if cell == "lstm" else (states, None)
    res = {"output": out, "h_n": hn}
    if cell == "lstm":
        res["c_n"] = cn
    if train:
        tensors, grads = [out, hn], [inputs["g_out"], inputs["g_h"]]
        if cell == "lstm":
            tensors.append(cn)
            grads.append(inputs["g_c"])
        torch.autograd.backward(tensors, grads)
        leaves = {"input": x, "h0": h0}
        if cell == "lstm":
            leaves["c0"] = c0
        leaves.update(runner.params)
        for name, t in leaves.items():
            res[f"grad:{name}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    out = {k: v.detach() for k, v in res.items()}
    for p in runner.params.values():
        p.grad = None
    return out


def _maxabs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    d = (a.double() - b.double()).abs()
    if torch.isnan(d).any():
        return math.inf
    return d.max().item()


FP32_FLOOR = 5e-5


def tolerance_rule(dtype: str) -> str:
    if dtype == "float64":
        return "fp64: |peer - torch.nn| <= 1e-10 per tensor"
    ref = "fp64" if dtype == "float32" else "fp32"
    return (f"{SHORT_DTYPE[dtype]}: |peer - torch.nn({ref})| <= max({FP32_FLOOR:g}, "
            f"2 * |torch.nn({SHORT_DTYPE[dtype]}) - torch.nn({ref})|) per tensor")


def tolerance(dtype: str, torch_err: Optional[float]) -> float:
    """Allowed error of one tensor (see :func:`tolerance_rule`)."""
    if dtype == "float64":
        return 1e-10
    return max(FP32_FLOOR, 2.0 * (torch_err or 0.0))


@dataclass
class GateResult:
    passed: bool
    rule: str
    checked: list
    failures: list  # "key: err > tol"
    worst_key: Optional[str]
    worst_ratio: float  # largest err / tol
    output_diff: float  # max |peer - torch.nn| on the output
    errors: dict = field(default_factory=dict)  # key -> (err, tol)

    def summary(self) -> str:
        if self.passed:
            return f"gate ok (worst {self.worst_key}: {self.worst_ratio:.2g} of tol)"
        return "gate FAILED: " + "; ".join(self.failures[:3]) + (
            f" (+{len(self.failures) - 3} more)" if len(self.failures) > 3 else "")

    def to_dict(self) -> dict:
        return {"passed": self.passed, "rule": self.rule, "checked": self.checked,
                "failures": self.failures, "worst_key": self.worst_key,
                "worst_err_over_tol": _finite(self.worst_ratio),
                "errors": {k: {"err": _finite(e), "tol": t} for k, (e, t) in self.errors.items()}}


def gate_check(dtype: str, base: dict, peer: dict, ref: Optional[dict] = None) -> GateResult:
    """Compare a peer's results with torch.nn's (and the higher-precision
    reference run) tensor by tensor."""
    failures, worst_key, worst_ratio, errors = [], None, 0.0, {}
    for key, b in base.items():
        p = peer.get(key)
        if p is None:
            failures.append(f"{key}: missing")
            worst_key, worst_ratio = key, math.inf
            errors[key] = (math.inf, 0.0)
            continue
        if ref is None:
            err, tol = _maxabs(p, b), tolerance(dtype, None)
        else:
            err, tol = _maxabs(p, ref[key]), tolerance(dtype, _maxabs(b, ref[key]))
        errors[key] = (err, tol)
        ratio = err / tol if tol > 0 else math.inf
        if ratio > worst_ratio or worst_key is None:
            worst_key, worst_ratio = key, ratio
        if not err <= tol:
            failures.append(f"{key}: err {err:.3g} > tol {tol:.3g}")
    out_diff = _maxabs(peer["output"], base["output"]) if "output" in peer else math.inf
    return GateResult(not failures, tolerance_rule(dtype), list(base), failures,
                      worst_key, worst_ratio, out_diff, errors)


def torch_error(base: dict, ref: Optional[dict]) -> Optional[float]:
    """Largest error of torch.nn itself against its higher-precision run."""
    if ref is None:
        return None
    return max(_maxabs(base[k], ref[k]) for k in base)


# --------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------


def make_step(runner: Runner, case: Case, train: bool) -> Callable[[], None]:
    """One timed call: forward (no_grad) or forward+backward of the output.
    Gradients are released at the end of the call, so nothing carries over."""
    if not train:
        fwd = runner.prepare(case.x, case.hx())

        def infer_step():
            with torch.no_grad():
                fwd()
        return infer_step

    x = case.x.detach().clone().requires_grad_(True)
    fwd = runner.prepare(x, case.hx())
    g = case.g_out
    params = list(runner.params.values())

    def train_step():
        out = fwd()
        out.backward(g)
        x.grad = None
        for p in params:
            p.grad = None
    return train_step


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(fn: Callable, n: int, device: str) -> float:
    """Seconds for ``n`` back-to-back calls."""
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def time_steps(steps: dict, *, reps: int, warmup: int, device: str, min_sample_s: float = 0.0,
               tick: Optional[Callable[[str], None]] = None) -> dict:
    """Warm up, then ``reps`` repetitions in which every step runs once, the
    order rotating each repetition.  Returns per-step statistics in seconds."""
    names = list(steps)
    for w in range(warmup):
        for n in names:
            if tick:
                tick(f"warm-up {w + 1}/{warmup} {n}")
            steps[n]()
    _sync(device)
    inner = {}
    for n in names:  # calibration (also one more warm-up call)
        t = _measure(steps[n], 1, device)
        inner[n] = 1 if min_sample_s <= 0 else max(1, min(1000, math.ceil(min_sample_s / max(t, 1e-9))))
    samples = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.collect(0)  # (a full collection costs ~0.1 s with torch loaded; gc is off while timing)
    gc.disable()
    try:
        for r in range(reps):
            if tick:
                tick(f"timing {r + 1}/{reps}")
            k = r % len(names)
            for n in names[k:] + names[:k]:
                samples[n].append(_measure(steps[n], inner[n], device) / inner[n])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: {"median": statistics.median(s), "min": min(s), "max": max(s),
                "samples": len(s), "calls_per_sample": inner[n]} for n, s in samples.items()}


_LIBC = None


def _malloc_trim():
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except Exception:  # noqa: BLE001
        pass


def _proc_status_kb(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> Optional[int]:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_memory(fn: Callable, device: str) -> Optional[int]:
    """Bytes one call adds at its peak (see the module docstring)."""
    gc.collect(0)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    _malloc_trim()
    before = _rss_bytes()
    if before is None:
        return None
    if _reset_peak_rss():
        fn()
        hwm = _proc_status_kb("VmHWM")
        return None if hwm is None else max(0, hwm * 1024 - before)
    # no clear_refs: sample the resident set from a thread while the call runs
    peak, done = [before], threading.Event()

    def sampler():
        while not done.is_set():
            r = _rss_bytes()
            if r is not None and r > peak[0]:
                peak[0] = r
            time.sleep(0.0005)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return max(0, peak[0] - before)


MEMORY_METRIC = {
    "cuda": "torch.cuda.max_memory_allocated() during one call (after reset_peak_memory_stats) "
            "minus torch.cuda.memory_allocated() before it",
    "cpu": "peak resident set during one call (VmHWM after clearing it via /proc/self/clear_refs, "
           "after malloc_trim) minus VmRSS before it; memory the allocator already held is not counted",
}


# --------------------------------------------------------------------------
# one configuration -> rows
# --------------------------------------------------------------------------


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _row(cfg: Config, peer: str, status: str, note: str = "", *, stats=None, base_median=None,
         mem=None, gate: Optional[GateResult] = None, out_diff: Optional[float] = None,
         extra_gate: Optional[dict] = None) -> dict:
    row = {
        "id": cfg.id, "label": cfg.label, "config": cfg.to_dict(),
        "peer": peer, "status": status, "note": note,
        "time_ms": None, "samples": None, "calls_per_sample": None,
        "us_per_step": None, "flops": cfg.flops, "tflops": None,
        "peak_mem_mb": None, "ratio_vs_torch": None,
        "max_abs_diff_vs_torch": _finite(out_diff) if out_diff is not None else None,
        "gate": gate.to_dict() if gate is not None else extra_gate,
    }
    if stats is not None:
        med = stats["median"]
        row["time_ms"] = {k: stats[k] * 1e3 for k in ("median", "min", "max")}
        row["samples"], row["calls_per_sample"] = stats["samples"], stats["calls_per_sample"]
        row["us_per_step"] = med * 1e6 / cfg.T
        row["tflops"] = cfg.flops / med / 1e12
        if base_median is not None:
            row["ratio_vs_torch"] = base_median / med
    if mem is not None:
        row["peak_mem_mb"] = mem / 2**20
    return row


def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def check_peer(peer: Peer, case: Case, train: bool):
    """Build a peer for ``case`` and gate it: returns ``(runner, GateResult)``."""
    runner = peer.build(case.cfg, case.baseline)
    res = evaluate(runner, case.cfg.cell, case.inputs(), train)
    gate = gate_check(case.cfg.dtype, case.baseline_results(train), res, case.reference_results(train))
    return runner, gate


def run_config(cfg: Config, peers: Sequence[Peer], *, reps: int, warmup: int,
               min_sample_s: float = 0.0, seed: int = 0,
               tick: Optional[Callable[[str], None]] = None) -> list:
    """Gate, then time, every peer on one configuration; one row per peer
    (the torch.nn baseline first)."""
    train = cfg.mode == "train"
    tick = tick or (lambda s: None)
    try:
        tick("baseline")
        case = Case(cfg, seed)
        base_res = case.baseline_results(train)
        ref_res = case.reference_results(train)
    except Exception as e:  # noqa: BLE001
        note = f"baseline failed: {_err(e)}"
        return [_row(cfg, BASELINE, "error", note)] + [_row(cfg, p.name, "error", note) for p in peers]

    own_err = torch_error(base_res, ref_res)
    base_gate = {"passed": True, "rule": "baseline",
                 "torch_error_vs_ref": _finite(own_err) if own_err is not None else None,
                 "ref_dtype": str(case.ref_dtype).replace("torch.", "") if case.ref_dtype else None}
    rows: dict = {}
    timed = {BASELINE: (case.baseline_runner(), None)}
    for peer in peers:
        reason = peer.skip_reason(cfg)
        if reason:
            rows[peer.name] = _row(cfg, peer.name, "skipped", reason)
            continue
        tick(f"gate {peer.name}")
        try:
            runner, gate = check_peer(peer, case, train)
        except Exception as e:  # noqa: BLE001
            rows[peer.name] = _row(cfg, peer.name, "error", _err(e))
            continue
        if not gate.passed:  # never time a wrong kernel
            rows[peer.name] = _row(cfg, peer.name, "failed", gate.summary(), gate=gate,
                                   out_diff=gate.output_diff)
            continue
        timed[peer.name] = (runner, gate)

    try:
        steps = {n: make_step(r, case, train) for n, (r, _) in timed.items()}
        stats = time_steps(steps, reps=reps, warmup=warmup, device=cfg.device,
                           min_sample_s=min_sample_s, tick=tick)
        tick("memory")
        mems = {n: measure_peak_memory(s, cfg.device) for n, s in steps.items()}
    except Exception as e:  # noqa: BLE001
        note = f"timing failed: {_err(e)}"
        out = [_row(cfg, BASELINE, "error", note)]
        out += [rows.get(p.name) or _row(cfg, p.name, "error", note) for p in peers]
        return out

    base_med = stats[BASELINE]["median"]
    out = [_row(cfg, BASELINE, "ok", "baseline", stats=stats[BASELINE], base_median=base_med,
                mem=mems[BASELINE], out_diff=0.0, extra_gate=base_gate)]
    for peer in peers:
        if peer.name in rows:
            out.append(rows[peer.name])
            continue
        runner, gate = timed[peer.name]
        out.append(_row(cfg, peer.name, "ok", runner.note, stats=stats[peer.name],
                        base_median=base_med, mem=mems[peer.name], gate=gate,
                        out_diff=gate.output_diff))
    del case, steps, timed
    if cfg.device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return out


class Progress:
    """A progress bar on stderr (redrawn in place on a terminal, one line per
    configuration otherwise)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.i, self.label, self._last = 0, "", 0.0

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def start(self, i: int, label: str):
        self.i, self.label = i, label
        if not self.enabled:
            return
        if self.tty:
            self.stage("")
        else:
            self.stream.write(f"[{i + 1}/{self.total}] {self._elapsed()} {label}\n")
            self.stream.flush()

    def stage(self, text: str):
        if not self.tty:
            return
        now = time.perf_counter()
        if text and now - self._last < 0.1:
            return
        self._last = now
        width = 24
        filled = int(width * self.i / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        done = self.i
        eta = ""
        if done:
            rem = (now - self.t0) / done * (self.total - done)
            eta = f" eta {int(rem) // 60:02d}:{int(rem) % 60:02d}"
        line = f"[{bar}] {done}/{self.total} {self._elapsed()}{eta} | {self.label} | {text}"
        cols = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + line[: cols - 1].ljust(cols - 1))
        self.stream.flush()

    def finish(self):
        if not self.enabled:
            return
        msg = f"{self.total}/{self.total} configurations in {self._elapsed()}"
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + f"[{'#' * 24}] {msg}"[: cols - 1].ljust(cols - 1) + "\n")
        else:
            self.stream.write(f"done: {msg}\n")
        self.stream.flush()


def run(configs: Sequence[Config], peers: Sequence[Peer], *, reps: int, warmup: int,
        min_sample_s: float = 0.0, seed: int = 0, progress: Optional[Progress] = None) -> list:
    rows = []
    for i, cfg in enumerate(configs):
        if progress:
            progress.start(i, cfg.label)
        rows += run_config(cfg, peers, reps=reps, warmup=warmup, min_sample_s=min_sample_s,
                           seed=seed, tick=progress.stage if progress else None)
    if progress:
        progress.i = len(configs)
        progress.finish()
    return rows


# --------------------------------------------------------------------------
# environment and output
# --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fusedrnn_backend() -> Optional[str]:
    try:
        return str(importlib.import_module("fusedrnn").backend())
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({type(e).__name__})"


def _fusedrnn_build() -> Optional[str]:
    try:
        return str(importlib.import_module("fusedrnn").build_info())
    except Exception:  # noqa: BLE001
        return None


def collect_env(device: str) -> dict:
    env = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fusedrnn_backend": _fusedrnn_backend(),
        "fusedrnn_build": _fusedrnn_build(),
        "flashrnn": None,
        "gpu": None,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                 "matmul": torch.backends.cuda.matmul.allow_tf32},
        "memory_metric": MEMORY_METRIC[device],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        pass
    if _flashrnn_fn() is not None:
        try:
            from importlib.metadata import version
            env["flashrnn"] = version("flashrnn")
        except Exception:  # noqa: BLE001
            env["flashrnn"] = "installed"
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count}
        env["device_name"] = p.name
    else:
        env["device_name"] = env["cpu_model"]
    return env


DEFINITIONS = {
    "ratio_vs_torch": "torch.nn median time / peer median time (> 1: faster than torch.nn)",
    "time_ms": "per call (forward, or forward+backward in train mode): median, min, max over samples",
    "us_per_step": "median time / T, in microseconds",
    "tflops": "FLOPs / median time; forward 2*G*B*H*(I_l+H)*T per layer and direction "
              "(LSTM G=4: 8*B*H*(I+H)*T; GRU G=3), train = 3x forward",
    "peak_mem_mb": "memory added by one call at its peak (env.memory_metric), MiB",
    "max_abs_diff_vs_torch": "max |peer output - torch.nn output| in the row's precision",
    "status": "ok | failed (correctness gate; not timed) | skipped (peer does not apply) | error",
}

COLUMNS = ("config", "peer", "median ms", "[min, max] ms", "us/step", "TFLOP/s",
           "peak MB", "vs torch", "max|d out|", "status / note")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(rows: Sequence[dict], repeat_config: bool = True) -> list:
    out, last = [], None
    for r in rows:
        t = r["time_ms"]
        label = r["label"] if (repeat_config or r["id"] != last) else ""
        last = r["id"]
        status = r["status"] if r["status"] != "ok" else ""
        note = " ".join(x for x in (status, r["note"]) if x)
        out.append([
            label, r["peer"],
            _fmt(t and t["median"], ".3f"),
            "-" if t is None else f"[{t['min']:.3f}, {t['max']:.3f}]",
            _fmt(r["us_per_step"], ".1f"),
            _fmt(r["tflops"], ".3g"),
            _fmt(r["peak_mem_mb"], ".1f"),
            "-" if r["ratio_vs_torch"] is None else f"{r['ratio_vs_torch']:.2f}x",
            _fmt(r["max_abs_diff_vs_torch"], ".1e"),
            note,
        ])
    return out


def format_table(rows: Sequence[dict]) -> str:
    body = table_rows(rows, repeat_config=False)
    cells = [list(COLUMNS)] + body
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    numeric = {2, 3, 4, 5, 6, 7, 8}

    def line(c):
        return "  ".join(c[i].rjust(widths[i]) if i in numeric else c[i].ljust(widths[i])
                         for i in range(len(c))).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(c) for c in body])


def format_markdown(rows: Sequence[dict], env: dict, meta: dict) -> str:
    head = [
        "# fusedrnn benchmark",
        "",
        f"- device: {env['device']} ({env['device_name']}), cores {env['cpu_count']}, "
        f"threads {env['threads']}",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"fusedrnn backend {env['fusedrnn_backend']}, flashrnn {env['flashrnn'] or 'not installed'}",
        f"- preset `{meta.get('preset')}`, reps {meta.get('reps')}, warm-up {meta.get('warmup')}; "
        f"{env['timestamp']}",
        f"- vs torch = {DEFINITIONS['ratio_vs_torch']}; peak MB = {env['memory_metric']}",
        "",
    ]
    esc = [[c.replace("|", "\\|") for c in r] for r in table_rows(rows)]
    cols = [c.replace("|", "\\|") for c in COLUMNS]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if i in (0, 1, 9) else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(head + lines) + "\n"


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_plots(rows: Sequence[dict], out_dir: Path, title: str = "") -> list:
    """PNG plots of the speedup against B and against H (log axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    pts = [r for r in rows if r["status"] == "ok" and r["peer"] != BASELINE
           and r["ratio_vs_torch"] is not None]
    order = {"lstm": 0, "gru": 1, "train": 0, "infer": 1}
    panels = sorted({(r["config"]["cell"], r["config"]["mode"]) for r in rows},
                    key=lambda cm: (order.get(cm[0], 9), order.get(cm[1], 9)))
    files = []
    for xkey, fname, xlabel in (("B", "ratio_vs_batch.png", "batch size B"),
                                ("H", "ratio_vs_hidden.png", "hidden size H")):
        n = max(1, len(panels))
        ncols = min(2, n)
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, panel in zip(axes.flat, panels or [("", "")]):
            sel = [r for r in pts if (r["config"]["cell"], r["config"]["mode"]) == panel]
            series: dict = {}
            for r in sel:
                c = r["config"]
                fixed = [f"T={c['T']}"]
                if xkey == "B":
                    fixed += [f"H={c['H']}"] + ([f"I={c['I']}"] if c["I"] != c["H"] else [])
                else:
                    fixed += [f"B={c['B']}"] + ([f"I={c['I']}"] if c["I"] != c["H"] else [])
                if c["layers"] != 1:
                    fixed.append(f"L={c['layers']}")
                if c["bidirectional"]:
                    fixed.append("bi")
                key = f"{r['peer']} {SHORT_DTYPE[c['dtype']]} " + " ".join(fixed)
                series.setdefault(key, []).append((c[xkey], r["ratio_vs_torch"]))
            ys, xs = [1.0], []
            annotate = sum(len(p) for p in series.values()) <= 24
            for key, p in sorted(series.items()):
                p.sort()
                (line,) = ax.plot([a for a, _ in p], [b for _, b in p], "o-", ms=5, label=key)
                if annotate:
                    for a, b in p:
                        ax.annotate(f"{b:.2f}x", (a, b), textcoords="offset points", xytext=(6, 4),
                                    fontsize=7, color=line.get_color())
                xs += [a for a, _ in p]
                ys += [b for _, b in p]
            ax.axhline(1.0, color="k", ls="--", lw=1, label="torch.nn (= 1)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            lo, hi = min(0.5, min(ys) / 1.3), max(2.0, max(ys) * 1.3)
            ax.set_ylim(lo, hi)
            ticks = [2.0 ** k for k in range(-10, 11) if lo <= 2.0 ** k <= hi]
            ax.set_yticks(ticks)
            ax.set_yticklabels([f"{t:g}x" for t in ticks])
            ax.yaxis.set_minor_formatter(NullFormatter())
            if xs:
                ux = sorted(set(xs))
                ax.set_xlim(ux[0] / 1.5, ux[-1] * 1.5)
                ax.set_xticks(ux)
                ax.set_xticklabels([str(v) for v in ux])
                ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                ax.text(0.5, 0.6, "no peer row passed the gate", transform=ax.transAxes,
                        ha="center", color="red")
            ax.set_title(f"{panel[0].upper()} {panel[1]}" if panel[0] else "no rows")
            ax.set_xlabel(f"{xlabel} (log)")
            ax.set_ylabel("speedup vs torch.nn (log; > 1 is faster)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def write_outputs(out_dir, rows: Sequence[dict], env: dict, meta: dict, plots: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "env": env, "meta": meta,
           "definitions": DEFINITIONS, "rows": list(rows)}
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    with open(paths["json"], "w") as f:
        json.dump(_jsonable(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    paths["md"].write_text(format_markdown(rows, env, meta))
    if plots:
        title = f"fusedrnn vs torch.nn - {env['device']} ({env['device_name']}), preset {meta.get('preset')}"
        paths["png"] = write_plots(rows, out_dir, title)
    return paths


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _number_parser(kind, minimum: float, what: str):
    """An argparse type: ``kind(s)``, finite and at least ``minimum``."""

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {s!r}") from None
        if not (math.isfinite(v) and v >= minimum):
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}: {s!r}")
        return v

    return parse


_positive_int = _number_parser(int, 1, "an integer")
_nonneg_int = _number_parser(int, 0, "an integer")
_nonneg_float = _number_parser(float, 0, "a number")


def _dtypes(s: str) -> tuple:
    out = []
    for part in s.split(","):
        key = part.strip().lower()
        if key not in DTYPE_ALIASES:
            raise argparse.ArgumentTypeError(
                f"unknown dtype {part!r} (choose from float32, bfloat16, float16, float64)")
        if DTYPE_ALIASES[key] not in out:
            out.append(DTYPE_ALIASES[key])
    return tuple(out)


def _shape(s: str) -> Shape:
    parts = s.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape wants T,B,I,H (four integers), got {s!r}")
    try:
        T, B, I, H = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants integers, got {s!r}") from None
    if min(T, B, I, H) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be >= 1, got {s!r}")
    return Shape(T, B, I, H)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedrnn.bench",
        description="Benchmark fusedrnn.LSTM/GRU against torch.nn.LSTM/GRU (same weights, "
                    "same inputs, correctness-gated).",
        epilog="Presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
               + ". Exit status 1 when a row failed the correctness gate or errored.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--dtype", type=_dtypes, default=None,
                   help="comma-separated: float32,bfloat16,float16,float64 "
                        "(default: the preset's; float32 on CPU)")
    p.add_argument("--cell", choices=("lstm", "gru", "both"), default="both")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both",
                   help="train = forward+backward, infer = forward under no_grad")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write results.json, results.md and PNG plots here")
    p.add_argument("--reps", type=_positive_int, default=None,
                   help="timed repetitions per row (default: the preset's)")
    p.add_argument("--warmup", type=_nonneg_int, default=None,
                   help="warm-up calls per peer before timing (default: the preset's)")
    p.add_argument("--min-sample-ms", type=_nonneg_float, default=None,
                   help="repeat a call within one sample until it takes this long "
                        "(default 5 on CPU, 2 on GPU; 0 = one call per sample)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads for the run (CPU)")
    p.add_argument("--shape", type=_shape, action="append", default=None, metavar="T,B,I,H",
                   help="replace the preset's shapes (repeatable)")
    p.add_argument("--layers", type=_positive_int, default=None,
                   help="number of layers for every shape (default: the preset's, 1)")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional for every shape")
    p.add_argument("--reference", action="store_true",
                   help="add the pure-Python reference as a peer (slow)")
    p.add_argument("--no-flashrnn", action="store_true", help="leave FlashRNN out")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let cuDNN/cuBLAS use TF32 for fp32 (off by default: the gate compares fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    preset = PRESETS[args.preset]
    args.cells = ("lstm", "gru") if args.cell == "both" else (args.cell,)
    args.modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    args.dtypes = args.dtype or preset.dtypes(args.device)
    if args.reps is None:
        args.reps = preset.reps[args.device]
    if args.warmup is None:
        args.warmup = preset.warmup[args.device]
    if args.min_sample_ms is None:
        args.min_sample_ms = 2.0 if args.device == "cuda" else 5.0
    return args


def configs_from_args(args: argparse.Namespace) -> list:
    shapes = list(args.shape) if args.shape else list(PRESETS[args.preset].shapes(args.device))
    if args.layers is not None or args.bidirectional:
        shapes = [Shape(s.T, s.B, s.I, s.H, args.layers or s.layers,
                        args.bidirectional or s.bidirectional) for s in shapes]
    return make_configs(_dedupe(shapes), args.device, args.dtypes, args.cells, args.modes)


def summarize(rows: Sequence[dict]) -> str:
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts = [f"{len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    by_peer: dict = {}
    for r in rows:
        if r["peer"] != BASELINE and r["ratio_vs_torch"]:
            by_peer.setdefault(r["peer"], []).append(r["ratio_vs_torch"])
    for peer, rs in by_peer.items():
        gm = math.exp(sum(math.log(v) for v in rs) / len(rs))
        parts.append(f"{peer}: geometric-mean speedup vs torch.nn {gm:.2f}x over {len(rs)} rows "
                     f"(min {min(rs):.2f}x, max {max(rs):.2f}x)")
    return "\n".join(parts)


class _TorchSettings:
    """Apply threads / TF32 for the run and restore them afterwards."""

    def __init__(self, threads: Optional[int], allow_tf32: bool):
        self.threads, self.allow_tf32 = threads, allow_tf32

    def __enter__(self):
        self.saved = (torch.get_num_threads(), torch.backends.cudnn.allow_tf32,
                      torch.backends.cuda.matmul.allow_tf32)
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved[0])
        torch.backends.cudnn.allow_tf32 = self.saved[1]
        torch.backends.cuda.matmul.allow_tf32 = self.saved[2]
        return False


def main(argv: Optional[Sequence[str]] = None, peers: Optional[Sequence[Peer]] = None,
         stdout=None, stderr=None) -> int:
    """Command-line entry point.  ``peers`` replaces the default peers
    (fusedrnn, and FlashRNN / the reference where they apply); torch.nn,
    the baseline, is always there.  Returns the exit status."""
    args = parse_args(argv)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    configs = configs_from_args(args)
    if args.list:
        for c in configs:
            stdout.write(f"{c.id}\n")
        stdout.write(f"{len(configs)} configurations\n")
        return 0
    if peers is None:
        peers = default_peers(args.device, reference=args.reference, flashrnn=not args.no_flashrnn)
    names = [p.name for p in peers]
    if BASELINE in names or len(set(names)) != len(names):
        raise ValueError(f"peer names must be unique and not {BASELINE!r}: {names}")

    with _TorchSettings(args.threads, args.allow_tf32):
        env = collect_env(args.device)
        meta = {"preset": args.preset if not args.shape else f"{args.preset} (--shape)",
                "reps": args.reps, "warmup": args.warmup, "min_sample_ms": args.min_sample_ms,
                "seed": args.seed, "peers": [BASELINE] + names, "argv": list(argv if argv is not None
                                                                        else sys.argv[1:]),
                "gate_rules": {d: tolerance_rule(d) for d in args.dtypes}}
        progress = Progress(len(configs), stream=stderr, enabled=not args.no_progress)
        t0 = time.perf_counter()
        rows = run(configs, peers, reps=args.reps, warmup=args.warmup,
                   min_sample_s=args.min_sample_ms / 1e3, seed=args.seed, progress=progress)
        meta["wall_s"] = round(time.perf_counter() - t0, 2)

    stdout.write(f"\nfusedrnn benchmark: {env['device']} ({env['device_name']}), "
                 f"{env['threads']} threads, torch {env['torch']}, "
                 f"fusedrnn backend {env['fusedrnn_backend']}\n\n")
    stdout.write(format_table(rows) + "\n\n")
    stdout.write(f"vs torch = {DEFINITIONS['ratio_vs_torch']}\n")
    stdout.write(summarize(rows) + "\n")
    if args.out:
        paths = write_outputs(args.out, rows, env, meta, plots=not args.no_plot)
        written = [paths["json"], paths["md"]] + list(paths.get("png", []))
        stdout.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    stdout.flush()
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
