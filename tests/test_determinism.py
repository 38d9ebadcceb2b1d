"""Runs are bit-reproducible (on every device: tests/devices.py); repeated backward
accumulates; double backward matches torch."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from conftest import TOL, assert_results_close, assert_results_equal, make_pair, run

CONFIGS = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3), False,
                 id="LSTM-L2-bi-proj"),
    pytest.param("LSTM", dict(num_layers=1), True, id="LSTM-packed"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True), False, id="GRU-L2-bi"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True), True, id="GRU-L2-bi-packed"),
    pytest.param("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu"), True,
                 id="RNN-L2-bi-relu-packed"),
]
LENGTHS = torch.tensor([3, 6, 1, 5])


def _setup(kind, kwargs, packed, dtype=torch.float32):
    ref, fused = make_pair(kind, 5, 7, dtype=dtype, **kwargs)
    D = 2 if fused.bidirectional else 1
    x = torch.randn(6, 4, 5, dtype=dtype)
    h0 = torch.randn(fused.num_layers * D, 4, fused.proj_size or 7, dtype=dtype)
    c0 = torch.randn(fused.num_layers * D, 4, 7, dtype=dtype)
    hx = (h0, c0) if kind == "LSTM" else h0
    wrap = (lambda x: pack_padded_sequence(x, LENGTHS, enforce_sorted=False)) if packed else None
    return ref, fused, x, hx, wrap


@pytest.mark.parametrize("kind,kwargs,packed", CONFIGS)
def test_two_runs_bit_identical(kind, kwargs, packed, device_path):
    _, fused, x, hx, wrap = _setup(kind, kwargs, packed)
    fused, x, hx = device_path.to(fused), device_path.to(x), device_path.to(hx)
    first = run(fused, x, hx, wrap=wrap)
    second = run(fused, x, hx, wrap=wrap)
    assert_results_equal(second, first, "second run")


@pytest.mark.parametrize("kind,kwargs,packed", CONFIGS)
def test_backward_in_eval_mode(kind, kwargs, packed):
    ref, fused, x, hx, wrap = _setup(kind, {**kwargs, "dropout": 0.3}
                                     if kwargs.get("num_layers", 1) > 1 else kwargs,
                                     packed, torch.float64)
    ref.eval(), fused.eval()
    first = run(fused, x, hx, wrap=wrap)
    assert_results_equal(run(fused, x, hx, wrap=wrap), first, "eval mode, second run")
    assert_results_close(first, run(ref, x, hx, wrap=wrap), TOL[torch.float64], "eval vs torch")


@pytest.mark.parametrize("kind,kwargs,packed", CONFIGS)
def test_retain_graph_backward_twice_accumulates(kind, kwargs, packed):
    _, fused, x, hx, wrap = _setup(kind, kwargs, packed)
    x = x.requires_grad_()
    states = list(hx) if kind == "LSTM" else [hx]
    for s in states:
        s.requires_grad_()
    out, final = fused(wrap(x) if wrap else x, hx)
    out = out.data if packed else out
    finals = final if kind == "LSTM" else (final,)
    loss = (out * torch.randn_like(out)).sum() + sum((f * torch.randn_like(f)).sum()
                                                     for f in finals)
    leaves = [x, *states, *fused.parameters()]
    loss.backward(retain_graph=True)
    once = [t.grad.clone() for t in leaves]
    assert all(g.abs().sum() > 0 for g in once)
    loss.backward()
    for t, g in zip(leaves, once):
        assert torch.equal(t.grad, 2 * g)


CELLS = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


@pytest.mark.parametrize("kind", CELLS)
def test_second_order_gradients_match_torch(kind):
    """Double backward: under create_graph=True the backward is differentiable and its
    gradients (and the first-order ones it returns) match torch.nn's."""
    ref, fused = make_pair(kind, 5, 7, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64)  # a sequence (LSTM/GRU) or a batch (cells)

    def first_order(module, **kwargs):
        leaves = [x.clone().requires_grad_(), *module.parameters()]
        out = module(leaves[0])
        loss = (out[0] if isinstance(out, tuple) else out).pow(2).sum()
        return leaves, torch.autograd.grad(loss, leaves, **kwargs)

    leaves, grads = first_order(fused, create_graph=True)
    ref_leaves, ref_grads = first_order(ref, create_graph=True)
    for g, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, e, atol=TOL[torch.float64], rtol=0)
    expected = torch.autograd.grad(sum(g.pow(2).sum() for g in ref_grads), ref_leaves)
    got = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), leaves)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=TOL[torch.float64], rtol=0)
