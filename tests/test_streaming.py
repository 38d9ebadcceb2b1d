"""Streaming (``rnn.step``), stateful calls and truncated BPTT (``fusedrnn.tbptt``).

A state carried across calls, or step by step, must give what one long call gives
(outputs, final states and every gradient), as long as nothing is detached; tbptt must
give the same outputs with the graph cut between chunks.
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL, assert_results_close, make_pair, run

T, B = 7, 3


def _flat(state) -> list:
    return [state] if isinstance(state, torch.Tensor) else list(state)


def _stepwise(module):
    """``forward(x, hx)`` with the module's contract, computed by ``module.step``."""

    def forward(x, hx):
        steps = x.unbind(1 if module.batch_first and x.dim() == 3 else 0)
        state, outs = hx, []
        for x_t in steps:
            h_t, state = module.step(x_t, state)
            outs.append(h_t)
        return torch.stack(outs, 1 if module.batch_first and x.dim() == 3 else 0), state
    return forward


def _chunked(module, sizes):
    """``forward(x, hx)`` as consecutive stateful calls on chunks of ``sizes`` steps."""

    def forward(x, hx):
        dim = 1 if module.batch_first and x.dim() == 3 else 0
        state, outs = hx, []
        for chunk in x.split(sizes, dim=dim):
            out, state = module(chunk, state)
            outs.append(out)
        return torch.cat(outs, dim), state
    return forward


def _states(kind, layers, batch, hidden, proj, dtype, unbatched=False):
    shape = (layers, hidden) if unbatched else (layers, batch, hidden)
    h = torch.randn(*shape[:-1], proj or hidden, dtype=dtype) * 0.5
    if kind != "LSTM":
        return h
    return h, torch.randn(*shape, dtype=dtype) * 0.5


CASES = [  # kind, layers, proj, batch_first, unbatched, given state
    ("LSTM", 1, 0, False, False, True),
    ("LSTM", 2, 3, True, False, True),
    ("LSTM", 2, 0, False, True, False),
    ("GRU", 1, 0, True, False, False),
    ("GRU", 3, 0, False, False, True),
    ("GRU", 2, 0, False, True, True),
    ("RNN", 2, 0, True, False, True),
    ("RNN_RELU", 1, 0, False, True, False),
]


def _check_against_one_long_call(kind, layers, proj, batch_first, unbatched, given, dtype,
                                 target=None):
    kwargs = dict(num_layers=layers, batch_first=batch_first, dtype=dtype)
    if proj:
        kwargs["proj_size"] = proj
    ref, fused = make_pair(kind, 4, 5, **kwargs)
    move = target.to if target is not None else (lambda t: t)
    fused = move(fused)
    shape = (T, 4) if unbatched else ((B, T, 4) if batch_first else (T, B, 4))
    x = torch.randn(*shape, dtype=dtype)
    hx = _states(kind, layers, B, 5, proj, dtype, unbatched) if given else None
    expected = run(ref, x, hx)  # torch.nn, one long call
    for name, forward in (("step", _stepwise(fused)), ("chunks", _chunked(fused, [3, 1, 3]))):
        actual = run(fused, move(x), move(hx), forward=forward)
        assert_results_close(actual, expected, TOL[dtype], f"{name} {kind} L={layers}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("kind,layers,proj,batch_first,unbatched,given", CASES)
def test_step_and_chunks_match_one_long_call(kind, layers, proj, batch_first, unbatched, given,
                                             dtype):
    """On the CPU kernels (a chunk of several steps runs the persistent loop, a step the
    step loop)."""
    _check_against_one_long_call(kind, layers, proj, batch_first, unbatched, given, dtype)


@pytest.mark.parametrize("kind,layers,proj", [("LSTM", 2, 3), ("GRU", 2, 0), ("RNN", 2, 0)])
def test_step_and_chunks_on_the_cuda_kernels(kernel_device, kind, layers, proj):
    _check_against_one_long_call(kind, layers, proj, False, False, True, torch.float32,
                                 kernel_device)


def test_step_returns_torch_state_layout():
    lstm = fusedrnn.LSTM(4, 6, num_layers=2, proj_size=3)
    h_t, (h, c) = lstm.step(torch.randn(2, 4))
    assert h_t.shape == (2, 3) and h.shape == (2, 2, 3) and c.shape == (2, 2, 6)
    assert torch.equal(h_t, h[-1])
    h_t, (h, c) = lstm.step(torch.randn(4), None)  # unbatched
    assert h_t.shape == (3,) and h.shape == (2, 3) and c.shape == (2, 6)
    gru = fusedrnn.GRU(4, 6, num_layers=2)
    h_t, h = gru.step(torch.randn(4), torch.zeros(2, 6))
    assert h_t.shape == (6,) and h.shape == (2, 6) and torch.equal(h_t, h[-1])


def test_step_and_tbptt_under_autocast_match_the_module_call():
    lstm = fusedrnn.LSTM(4, 6).eval()
    x = torch.randn(3, 2, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm(x)
        h_t, _ = lstm.step(x[0])
        chunks = [o for o, _ in fusedrnn.tbptt(lstm, x, 2)]
        by_hand = _chunked(lstm, 2)(x, None)[0]  # the carried state is rounded to bf16
    assert out.dtype == h_t.dtype == chunks[0].dtype == torch.bfloat16
    assert torch.equal(h_t, out[0])
    assert torch.equal(torch.cat(chunks), by_hand)


def test_step_refuses_a_bidirectional_module():
    for rnn in (fusedrnn.LSTM(4, 5, bidirectional=True), fusedrnn.GRU(4, 5, bidirectional=True)):
        with pytest.raises(RuntimeError, match="bidirectional module cannot run one step"):
            rnn.step(torch.randn(2, 4))


@pytest.mark.parametrize("bad,error,words", [
    (torch.randn(1, 2, 4), ValueError, r"expected input of shape \(batch, 4\) or \(4,\)"),
    ([0.0] * 4, ValueError, "got list"),
    (torch.randn(2, 5), RuntimeError, "input.size\\(-1\\) must be equal to input_size"),
])
def test_step_bad_input(bad, error, words):
    with pytest.raises(error, match=words):
        fusedrnn.GRU(4, 5).step(bad)


@pytest.mark.parametrize("kind,state,error,words", [
    ("LSTM", torch.zeros(1, 2, 5), TypeError, "state must be a tuple"),
    ("LSTM", (torch.zeros(1, 3, 5), torch.zeros(1, 2, 5)), RuntimeError,
     r"Expected hidden size \(1, 2, 5\), got \(1, 3, 5\).*h_0"),
    ("LSTM", (torch.zeros(1, 2, 5), torch.zeros(2, 5)), RuntimeError, "c_0"),
    ("GRU", torch.zeros(2, 2, 5), RuntimeError, r"Expected hidden size \(1, 2, 5\)"),
    ("GRU", torch.zeros(1, 2, 5, dtype=torch.float64), RuntimeError, "dtype"),
])
def test_step_bad_state(kind, state, error, words):
    with pytest.raises(error, match=words):
        getattr(fusedrnn, kind)(4, 5).step(torch.randn(2, 4), state)


# ----------------------------------------------------------------- tbptt


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_first,unbatched", [(False, False), (True, False), (True, True)])
def test_tbptt_chunks_concatenate_to_the_full_output(kind, batch_first, unbatched):
    ref, fused = make_pair(kind, 4, 5, num_layers=2, batch_first=batch_first,
                           dtype=torch.float64)
    shape = (8, 4) if unbatched else ((B, 8, 4) if batch_first else (8, B, 4))
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        full, final = ref(x)
        chunks = list(fusedrnn.tbptt(fused, x, k=3))
    dim = 1 if batch_first and not unbatched else 0
    assert [c.shape[dim] for c, _ in chunks] == [3, 3, 2]  # the last chunk is shorter
    torch.testing.assert_close(torch.cat([c for c, _ in chunks], dim), full,
                               atol=TOL[torch.float64], rtol=0)
    for got, want in zip(_flat(chunks[-1][1]),
                         _flat(final)):
        torch.testing.assert_close(got, want, atol=TOL[torch.float64], rtol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_tbptt_cuts_the_graph_between_chunks(kind):
    """Each chunk's gradients are those of the chunk run alone from the previous
    chunk's final state as a constant; nothing reaches earlier chunks."""
    ref, fused = make_pair(kind, 4, 5, dtype=torch.float64)
    x = torch.randn(8, B, 4, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    state_ref = None
    for i, (out, _) in enumerate(fusedrnn.tbptt(fused, x, k=3)):
        out.square().sum().backward()
        start = 3 * i
        if start:
            assert x.grad[:start].abs().max() == 0  # stopped at the chunk's start
        assert x.grad[start:start + 3].abs().max() > 0
        out_ref, state_ref = ref(x_ref[start:start + 3], state_ref)
        out_ref.square().sum().backward()
        state_ref = _flat(state_ref)
        state_ref = state_ref[0].detach() if kind != "LSTM" else tuple(s.detach() for s in state_ref)
        torch.testing.assert_close(x.grad, x_ref.grad, atol=TOL[torch.float64], rtol=0)
        for (name, p), p_ref in zip(fused.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, atol=TOL[torch.float64], rtol=0,
                                       msg=f"chunk {i}: grad of {name}")
        x.grad = x_ref.grad = None
        fused.zero_grad()
        ref.zero_grad()


def test_tbptt_detaches_the_state_it_carries():
    lstm = fusedrnn.LSTM(4, 5)
    h0 = torch.zeros(1, B, 5, requires_grad=True)
    c0 = torch.zeros(1, B, 5, requires_grad=True)
    chunks = fusedrnn.tbptt(lstm, torch.randn(6, B, 4), 2, (h0, c0))
    out, (h, c) = next(chunks)
    assert h.grad_fn is not None  # the yielded state is still attached: it can enter a loss
    out, _ = next(chunks)
    out.sum().backward()
    assert h0.grad is None and c0.grad is None  # the second chunk started from a detached state


@pytest.mark.parametrize("k", [0, -1, 2.0, True, None])
def test_tbptt_bad_k(k):
    with pytest.raises(ValueError, match="k \\(steps per chunk\\) must be a positive int"):
        next(fusedrnn.tbptt(fusedrnn.GRU(4, 5), torch.randn(4, 1, 4), k))


def test_tbptt_bad_input():
    with pytest.raises(ValueError, match="x must be"):
        next(fusedrnn.tbptt(fusedrnn.GRU(4, 5), torch.randn(4), 2))


def test_step_applies_dropout_between_layers_in_training_only():
    lstm = fusedrnn.LSTM(4, 5, num_layers=2, dropout=0.5)
    x = torch.randn(3, 4)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(lstm.step(x)[0])
    assert torch.equal(runs[0], runs[1])  # reproducible under a seed
    lstm.eval()
    h_eval = lstm.step(x)[0]
    torch.testing.assert_close(h_eval, lstm(x.unsqueeze(0))[0][0], atol=TOL[torch.float32], rtol=0)
    assert not torch.allclose(runs[0], h_eval)


def test_step_compiles_with_fullgraph():
    lstm = fusedrnn.LSTM(4, 5, num_layers=2, proj_size=3)
    stepped = torch.compile(lambda x, s: lstm.step(x, s), fullgraph=True)
    x = torch.randn(3, 2, 4)
    state = expected_state = None
    for x_t in x:
        h_t, state = stepped(x_t, state)
        expected, expected_state = lstm.step(x_t, expected_state)
        torch.testing.assert_close(h_t, expected, atol=TOL[torch.float32], rtol=0)
    for got, want in zip(state, expected_state):
        torch.testing.assert_close(got, want, atol=TOL[torch.float32], rtol=0)
