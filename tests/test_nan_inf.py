"""NaN and +-Inf propagate exactly as in torch.nn, on every path.

A NaN, +Inf or -Inf (or a huge finite value) in the input, an initial state
or one weight gives, in every output, final state and gradient, the same
NaN/+Inf/-Inf pattern as torch.nn, and the finite values agree within the
project's tolerances. A NaN in one batch row leaves every other row as it
is without it.

The tests run on one backend per process: the one this process has, and
each entry of BACKENDS in a child process (pytest on this file) with the
entry's environment. A new path, such as the CUDA kernels run on the CPU
through a SIMT target, is one more entry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from conftest import TOL


@dataclass(frozen=True)
class Backend:
    name: str
    env: dict = field(default_factory=dict)  # environment of the process that runs it
    device: str = "cpu"  # where the modules and tensors live
    reports: str = ""  # what _describe() says in that process


def _describe() -> str:
    # for a sequence (T > 1): the ops' own plan
    path = fusedrnn.ops.layer_plan("lstm", torch.empty(2, 1, 1), 1).split()[0]
    persistent = path.endswith("_persistent")
    return f"{fusedrnn.backend()} {fusedrnn.build_info()} persistent={persistent}"


_CAPABILITY = torch.backends.cpu.get_cpu_capability()  # ATen's: DEFAULT, AVX2, AVX512, ...
_SIMD = {"AVX512": "cpu:avx512", "AVX2": "cpu:avx2"}.get(_CAPABILITY, "cpu:default")
BACKENDS = [
    Backend("cpu-native", reports=f"fused {_SIMD} persistent=True"),  # cells: the step loop
    *([Backend("cpu-avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, reports="fused cpu:avx2")]
      if torch.cpu._is_avx512_supported() else []),  # else the native one is AVX2 or less
    Backend("cpu-portable", {"ATEN_CPU_CAPABILITY": "default"}, reports="fused cpu:default"),
    Backend("cpu-step-loop", {"FUSEDRNN_PERSISTENT": "0"}, reports="persistent=False"),
    Backend("reference", {"FUSEDRNN_BACKEND": "reference"}, reports="reference"),
    # the CUDA kernel sources on the CPU (csrc/simt/): step kernels, persistent kernels
    Backend("simt", {"FUSEDRNN_BACKEND": "simt"}, reports="simt simt: "),
    Backend("simt-persistent", {"FUSEDRNN_BACKEND": "simt", "FUSEDRNN_PERSISTENT": "1"},
            reports="persistent=True"),
]
_CHILD = "FUSEDRNN_TEST_BACKEND"  # set in a child process: the name of the backend it runs
HERE = BACKENDS[[b.name for b in BACKENDS].index(os.environ.get(_CHILD, BACKENDS[0].name))]


def test_this_process_runs_its_backend():
    described = _describe().split()  # a CUDA build adds "cuda:<version>" to build_info
    assert all(word in described for word in HERE.reports.split()), _describe()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != HERE and _CHILD not in os.environ],
                         ids=lambda b: b.name)
def test_backend_in_a_child_process(backend):
    env = {**os.environ, **backend.env, _CHILD: backend.name}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
           "-k", "not test_backend_in_a_child_process"]
    done = subprocess.run(cmd, cwd=Path(__file__).parents[1], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]


# ------------------------------------------------------------------ cases

NAN, INF = float("nan"), float("inf")
VALUES = {"nan": NAN, "+inf": INF, "-inf": -INF, "+huge": 1e30, "-huge": -1e30}
MODULES = {  # kind, constructor arguments (input_size=4, hidden_size=6)
    "LSTM": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "LSTM-proj": ("LSTM", dict(proj_size=3)),
    "GRU": ("GRU", dict(num_layers=2, bidirectional=True)),
    "LSTMCell": ("LSTMCell", {}),
    "GRUCell": ("GRUCell", {}),
    "RNN-relu": ("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu")),
    "RNNCell": ("RNNCell", {}),
}
T, B, BAD_ROW = 5, 3, 1


def _places(kind, kwargs):
    states = ["h0", "c0"] if kind.startswith("LSTM") else ["h0"]
    params = [n for n, _ in getattr(torch.nn, kind)(4, 6, **kwargs).named_parameters()]
    return ["x", *states, *params]


# The huge inputs check the saturation of the bounded activations (the fast exp); the relu
# is unbounded, and its outputs near 1e30 carry rounding far above an absolute tolerance.
CASES = [pytest.param(module, place, value, id=f"{module}-{place}-{value}")
         for module, (kind, kwargs) in MODULES.items()
         for place in _places(kind, kwargs) for value in VALUES
         if value in ("nan", "+inf", "-inf")
         or (place == "x" and kwargs.get("nonlinearity") != "relu")]


def _inputs(kind, kwargs, dtype, place, value):
    """``(x, hx)`` on the CPU with ``value`` at one element of ``place`` ("x", "h0" or
    "c0"): batch row BAD_ROW, mid-sequence, first layer."""
    cell = kind.endswith("Cell")
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    step, lead = ((), ()) if cell else ((T,), (layers,))
    x = torch.randn(step + (B, 4), dtype=dtype)
    h0 = torch.randn(lead + (B, kwargs.get("proj_size") or 6), dtype=dtype)
    c0 = torch.randn(lead + (B, 6), dtype=dtype)
    if place == "x":
        x[(2,) * len(step) + (BAD_ROW, 2)] = value
    elif place in ("h0", "c0"):
        (h0 if place == "h0" else c0)[(0,) * len(lead) + (BAD_ROW, 2)] = value
    return x, ((h0, c0) if kind.startswith("LSTM") else h0)


def _pair(kind, kwargs, dtype, place, value):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(4, 6, dtype=dtype, **kwargs)
    fused = getattr(fusedrnn, kind)(4, 6, dtype=dtype, **kwargs)
    fused.load_state_dict(ref.state_dict())
    if place not in ("x", "h0", "c0"):
        for m in (ref, fused):
            with torch.no_grad():
                getattr(m, place).view(-1)[5] = value
    return ref, fused.to(HERE.device)


def _flat(result) -> list:
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _flat(item)]
    return [result]


def _run(module, x, hx, device, random_weights=True) -> dict:
    """Outputs, final states and every gradient; the loss ignores non-finite outputs so
    that the gradients carry the pattern of what fed the finite ones."""
    x = x.to(device).detach().requires_grad_()
    states = [s.to(device).detach().requires_grad_()
              for s in (hx if isinstance(hx, tuple) else (hx,))]
    outputs = _flat(module(x, tuple(states) if isinstance(hx, tuple) else states[0]))
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(device) if random_weights
               else torch.ones_like(o) for o in outputs]
    loss = sum((o.nan_to_num(0.0, 0.0, 0.0) * w).sum() for o, w in zip(outputs, weights))
    module.zero_grad(set_to_none=True)
    loss.backward()
    result = {f"out{i}": o.detach().cpu() for i, o in enumerate(outputs)}
    result["grad_x"] = x.grad.cpu()
    result.update({f"grad_state{i}": s.grad.cpu() for i, s in enumerate(states)})
    result.update({f"grad_{n}": p.grad.cpu() for n, p in module.named_parameters()})
    return result


def _assert_same_pattern(actual: dict, expected: dict, tol: float) -> None:
    assert actual.keys() == expected.keys()
    for key, e in expected.items():
        a = actual[key]
        masks = (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf))
        for what, mask in masks:
            assert torch.equal(mask(a), mask(e)), (
                f"{key}: {what} at {int(mask(e).sum())} places in torch.nn, {int(mask(a).sum())} "
                f"in fusedrnn, {int((mask(a) & mask(e)).sum())} shared")
        finite = a.isfinite() & e.isfinite()
        err = (a[finite] - e[finite]).abs().max().item() if finite.any() else 0.0
        assert err <= tol, f"{key}: finite values differ by {err:.3e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("module,place,value", CASES)
def test_pattern_like_torch(module, place, value, dtype):
    kind, kwargs = MODULES[module]
    ref, fused = _pair(kind, kwargs, dtype, place, VALUES[value])
    x, hx = _inputs(kind, kwargs, dtype, place, VALUES[value])
    expected = _run(ref, x, hx, "cpu")
    actual = _run(fused, x, hx, HERE.device)
    if place in ("x", "h0", "c0") and value == "nan":
        assert expected["out0"].isnan().any(), "the case must reach the output"
    _assert_same_pattern(actual, expected, TOL[dtype])


def test_closed_forget_gate_on_infinite_cell_like_torch():
    """f = sigmoid(-1e4) is exactly 0 in torch.nn, so f * c_0 with c_0 = +Inf is NaN: the
    fast exp must overflow to +Inf (not saturate below it) for 1 / (1 + exp(1e4)) to be 0."""
    for kind in ("LSTM", "LSTMCell"):
        ref, fused = _pair(kind, {}, torch.float32, "x", 0.0)
        for m in (ref, fused):
            with torch.no_grad():
                m.get_parameter("bias_ih_l0" if kind == "LSTM" else "bias_ih")[6:12] = -1e4
        x, (h0, c0) = _inputs(kind, {}, torch.float32, "c0", INF)
        expected, actual = _run(ref, x, (h0, c0), "cpu"), _run(fused, x, (h0, c0), HERE.device)
        assert expected["out1" if kind == "LSTMCell" else "out2"].isnan().any()
        _assert_same_pattern(actual, expected, TOL[torch.float32])


# ------------------------------------------------------ NaN stays in its row


ROW_CASES = [pytest.param(module, place, packed, id=f"{module}-{place}-{packed}")
             for module, (kind, _) in MODULES.items()
             for place in (["x", "h0", "c0"] if kind.startswith("LSTM") else ["x", "h0"])
             for packed in (["padded"] if kind.endswith("Cell") else ["padded", "packed"])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("module,place,packed", ROW_CASES)
def test_nan_stays_in_its_row(module, place, packed, dtype):
    """Every other row is what it is without the NaN row: outputs, final states and the
    gradients of the input and the initial states."""
    kind, kwargs = MODULES[module]
    _, fused = _pair(kind, kwargs, dtype, place, NAN)
    x, hx = _inputs(kind, kwargs, dtype, place, NAN)
    dim = 0 if kind.endswith("Cell") else 1  # the batch dimension of every tensor here
    states = hx if isinstance(hx, tuple) else (hx,)
    lengths = torch.tensor([4, 5, 3])

    def forward(rows):
        index = torch.tensor(rows)
        xs, hs = x.index_select(dim, index), tuple(s.index_select(dim, index) for s in states)
        module = _Packed(fused, lengths[index]) if packed == "packed" else fused
        result = _run(module, xs, hs if isinstance(hx, tuple) else hs[0], HERE.device,
                      random_weights=False)
        return {k: v for k, v in result.items() if k.startswith(("out", "grad_x", "grad_state"))}

    keep = [b for b in range(B) if b != BAD_ROW]
    every, clean = forward(list(range(B))), forward(keep)
    assert every["out0"].isnan().any()
    for key, value in clean.items():
        kept = every[key].index_select(dim, torch.tensor(keep))
        torch.testing.assert_close(kept, value, atol=TOL[dtype], rtol=0,
                                   msg=lambda m, key=key: f"{key}: {m}")


class _Packed(torch.nn.Module):
    """Runs ``module`` on its padded input packed with ``lengths``; pads the output back."""

    def __init__(self, module, lengths):
        super().__init__()
        self.module, self.lengths = module, lengths

    def forward(self, x, hx):
        packed = pack_padded_sequence(x, self.lengths, enforce_sorted=False)
        out, final = self.module(packed, hx)
        return pad_packed_sequence(out, total_length=x.shape[0])[0], final
