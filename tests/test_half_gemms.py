"""fp16/bf16 layers on the CUDA kernels (run here on the SIMT build): their GEMMs take
16-bit operands with fp32 results, as cuBLAS does on the tensor cores, while the state,
the gates and the pointwise math stay in fp32 (docs/design.md, CUDA cost model).

The accuracy bound of these layers (2x torch.nn's own error against fp64) is
test_parity.py::test_low_precision_error_within_twice_torch on the simt devices. Here:
that the path really computes this way, against a Python emulation of it, and not in
fp32 throughout (the CPU kernels' way, which the emulation without rounding follows).
"""

from __future__ import annotations

import pytest
import torch

from fusedrnn import ops
from devices import simt_marks

T, B, I, H = 12, 5, 7, 24
pytestmark = simt_marks()


def _weights(gates, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(dtype)  # noqa: E731
    return dict(x=r(T, B, I), w_ih=r(gates * H, I), w_hh=r(gates * H, H), b_ih=r(gates * H),
                b_hh=r(gates * H), h0=r(B, H), c0=r(B, H))


def _operand(h, dtype, round_operands):
    """What the recurrent GEMM reads: h rounded to the layer's dtype, or h in fp32."""
    return h.to(dtype).float() if round_operands else h


def emulate_lstm(w, dtype, round_operands):
    xproj = w["x"].float() @ w["w_ih"].float().t() + w["b_ih"].float()
    h, c, outs = w["h0"].float(), w["c0"].float(), []
    for t in range(T):
        gates = xproj[t] + _operand(h, dtype, round_operands) @ w["w_hh"].float().t()
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs).to(dtype)


def emulate_gru(w, dtype, round_operands):
    xproj = w["x"].float() @ w["w_ih"].float().t() + w["b_ih"].float()
    h, outs = w["h0"].float(), []
    for t in range(T):
        hh = _operand(h, dtype, round_operands) @ w["w_hh"].float().t() + w["b_hh"].float()
        xr, xz, xn = xproj[t].chunk(3, 1)
        hr, hz, hn = hh.chunk(3, 1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_gemm_reads_h_in_the_layers_dtype(cell, dtype):
    """Almost every output element equals the emulation with 16-bit operands exactly
    (a few may round the other way: fp32 sums in another order); the emulation in fp32
    throughout disagrees on many more."""
    w = _weights(4 if cell == "lstm" else 3, dtype)
    with ops.using_backend("simt"):
        if cell == "lstm":
            bias = (w["b_ih"].float() + w["b_hh"].float()).to(dtype)
            w["b_ih"] = bias
            out = ops.lstm_layer(w["x"], w["w_ih"], bias, w["w_hh"], None, w["h0"], w["c0"])[0]
        else:
            out = ops.gru_layer(w["x"], w["w_ih"], w["b_ih"], w["w_hh"], w["b_hh"], w["h0"])[0]
    emulate = emulate_lstm if cell == "lstm" else emulate_gru
    rounded, fp32 = emulate(w, dtype, True), emulate(w, dtype, False)
    assert out.dtype == dtype
    same_as_rounded = (out == rounded).float().mean().item()
    same_as_fp32 = (out == fp32).float().mean().item()
    assert same_as_rounded > 0.97, same_as_rounded
    assert same_as_fp32 < same_as_rounded - 0.05, (same_as_fp32, same_as_rounded)
    ulp = torch.finfo(dtype).eps * out.float().abs().max().item()
    assert (out.float() - rounded.float()).abs().max().item() <= 2 * ulp
