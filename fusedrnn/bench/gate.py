"""The correctness gate: no peer is timed before it matches torch.nn.

For one configuration a :class:`Case` holds the torch.nn baseline, its
weights and inputs.  :func:`evaluate` runs any built peer once and collects
its output, final states and (in train mode) the gradients of the input, the
initial states and every parameter.  :func:`gate_check` compares those with
torch.nn's, tensor by tensor, under the project's tolerances
(``fusedrnn.reference.TOLERANCE`` and ``low_precision_tolerance``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from fusedrnn.reference import TOLERANCE, low_precision_tolerance

from .configs import SHORT_DTYPE, Config, module_class
from .metrics import finite_or_none, max_abs_diff
from .peers import BuiltPeer, Peer, built_module


class Case:
    """Weights (torch.nn baseline) and inputs for one configuration, plus
    cached results of the baseline and of its higher-precision copy."""

    def __init__(self, cfg: Config, seed: int = 0):
        self.cfg = cfg
        dev, dt = cfg.device, cfg.torch_dtype
        torch.manual_seed(seed)
        cls, kwargs = module_class(torch.nn, cfg.cell)
        base = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional,
                   **kwargs)
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
        """The precision of the gate's higher-precision run: fp64 for fp32
        rows, fp32 for fp16/bf16 rows (whose errors are orders of magnitude
        above fp32's), none for fp64 rows."""
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

    def built_baseline(self) -> BuiltPeer:
        return built_module(self.baseline)

    def baseline_results(self, train: bool) -> dict:
        key = ("base", train)
        if key not in self._results:
            built = self.built_baseline()
            self._results[key] = evaluate(built, self.cfg.cell, self.inputs(), train)
        return self._results[key]

    def reference_results(self, train: bool) -> Optional[dict]:
        """torch.nn on the same (rounded) weights and inputs in higher precision."""
        if self.ref_dtype is None:
            return None
        key = ("ref", train)
        if key not in self._results:
            m = copy.deepcopy(self.baseline).to(self.ref_dtype)
            inputs = self.inputs(self.ref_dtype)
            self._results[key] = evaluate(built_module(m), self.cfg.cell, inputs, train)
            del m
        return self._results[key]


def evaluate(built: BuiltPeer, cell: str, inputs: dict, train: bool) -> dict:
    """Run ``built`` once; returns output, final states and (train) the
    gradients of ``loss = <out, g_out> + <h_n, g_h> (+ <c_n, g_c>)`` with
    respect to the input, the initial states and every parameter."""
    x = inputs["x"].detach().clone().requires_grad_(train)
    h0 = inputs["h0"].detach().clone().requires_grad_(train)
    c0 = None
    if cell == "lstm":
        c0 = inputs["c0"].detach().clone().requires_grad_(train)
    for p in built.params.values():
        p.grad = None
    with torch.set_grad_enabled(train):
        out, states = built.forward(x, (h0, c0) if cell == "lstm" else h0)
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
        leaves.update(built.params)
        for name, t in leaves.items():
            res[f"grad:{name}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    out = {k: v.detach() for k, v in res.items()}
    for p in built.params.values():
        p.grad = None
    return out


# ------------------------------------------------------------ tolerances

FP32_FLOOR = TOLERANCE[torch.float32]


def tolerance_rule(dtype: str) -> str:
    if dtype == "float64":
        return f"fp64: |peer - torch.nn| <= {TOLERANCE[torch.float64]:g} per tensor"
    ref = "fp64" if dtype == "float32" else "fp32"
    return (f"{SHORT_DTYPE[dtype]}: |peer - torch.nn({ref})| <= max({FP32_FLOOR:g}, "
            f"2 * |torch.nn({SHORT_DTYPE[dtype]}) - torch.nn({ref})|) per tensor")


def tolerance(dtype: str, torch_err: Optional[float]) -> float:
    """Allowed error of one tensor (see :func:`tolerance_rule`)."""
    if dtype == "float64":
        return TOLERANCE[torch.float64]
    return max(FP32_FLOOR, low_precision_tolerance(torch_err or 0.0))


# ------------------------------------------------------------------ gate


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
                "worst_err_over_tol": finite_or_none(self.worst_ratio),
                "errors": {k: {"err": finite_or_none(e), "tol": t}
                           for k, (e, t) in self.errors.items()}}


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
            err, tol = max_abs_diff(p, b), tolerance(dtype, None)
        else:
            err, tol = max_abs_diff(p, ref[key]), tolerance(dtype, max_abs_diff(b, ref[key]))
        errors[key] = (err, tol)
        ratio = err / tol if tol > 0 else math.inf
        if ratio > worst_ratio or worst_key is None:
            worst_key, worst_ratio = key, ratio
        if not err <= tol:
            failures.append(f"{key}: err {err:.3g} > tol {tol:.3g}")
    out_diff = max_abs_diff(peer["output"], base["output"]) if "output" in peer else math.inf
    return GateResult(not failures, tolerance_rule(dtype), list(base), failures,
                      worst_key, worst_ratio, out_diff, errors)


def torch_error(base: dict, ref: Optional[dict]) -> Optional[float]:
    """Largest error of torch.nn itself against its higher-precision run."""
    if ref is None:
        return None
    return max(max_abs_diff(base[k], ref[k]) for k in base)


def check_peer(peer: Peer, case: Case, train: bool):
    """Build a peer for ``case`` and gate it: returns ``(BuiltPeer, GateResult)``."""
    if hasattr(peer, "check"):  # a gate of its own (toolkit_peers.FeaturePeer)
        return peer.check(case, train)
    built = peer.build(case.cfg, case.baseline)
    res = evaluate(built, case.cfg.cell, case.inputs(), train)
    gate = gate_check(case.cfg.dtype, case.baseline_results(train), res,
                      case.reference_results(train))
    return built, gate
