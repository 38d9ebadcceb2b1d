"""CUDA tests: skipped where no GPU is present (run by `make gpu-check`).

Parity with the CPU path and reference.py for every dtype and feature,
opcheck on CUDA, torch.compile (fullgraph, reduce-overhead), CUDA graph
capture and replay, determinism, a long sequence, a > 2^31-element case,
and the persistent kernels forced on (FUSEDRNN_PERSISTENT=1) with their
fallback.
"""

import os

import pytest
import torch

import fusedrnn
from fusedrnn import ops, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
    pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="needs the compiled extension"),
]

DEV = "cuda"


@pytest.fixture(params=["standard", "persistent"])
def kernel_path(request):
    """Every parity test runs on the standard kernels and with the persistent ones forced."""
    ops.set_persistent("on" if request.param == "persistent" else "off")
    yield request.param
    ops.set_persistent("auto")


def pair(mode, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(**kw).to(DEV, dtype)
    fused = getattr(fusedrnn, mode)(**kw).to(DEV, dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def run(module, x, hx=None):
    """Output, final states and gradients of x and every parameter."""
    module.zero_grad()
    x = x.detach().requires_grad_()
    out, state = module(x, hx)
    states = list(state) if isinstance(state, tuple) else [state]
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    g = torch.Generator(device=data.device).manual_seed(1)
    loss = (data.float() * torch.randn(data.shape, generator=g, device=data.device)).sum()
    loss = loss + sum(s.float().sum() for s in states)
    loss.backward()
    return [data, *states, x.grad] + [p.grad for p in module.parameters()]


def max_errors(results, exact):
    return [(r.double() - e.double()).abs().max().item() for r, e in zip(results, exact)]


FEATURES = [
    dict(input_size=16, hidden_size=32),
    dict(input_size=16, hidden_size=33, num_layers=2, bidirectional=True),
    dict(input_size=16, hidden_size=32, batch_first=True),
    dict(input_size=8, hidden_size=24, num_layers=3, bias=False),
]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("kw", FEATURES)
def test_fp32_and_fp64_match_cpu_reference(mode, kw, kernel_path):
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 5e-5)):
        ref, fused = pair(mode, dtype, **kw)
        shape = (5, 12, kw["input_size"])
        x = torch.randn(shape, device=DEV, dtype=dtype)
        expected = run(ref.cpu(), x.cpu())
        got = run(fused, x)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g.cpu(), e, atol=tol, rtol=0)


def test_lstm_projection_and_packed(kernel_path):
    ref, fused = pair("LSTM", torch.float64, input_size=10, hidden_size=20, proj_size=7,
                      num_layers=2, bidirectional=True)
    lengths = torch.tensor([9, 3, 7, 1, 9])
    x = torch.randn(9, 5, 10, device=DEV, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    for e, g in zip(run(ref, packed), run(fused, packed)):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_unbatched_and_cells(mode, kernel_path):
    ref, fused = pair(mode, torch.float64, input_size=6, hidden_size=9)
    x = torch.randn(4, 6, device=DEV, dtype=torch.float64)
    for e, g in zip(run(ref, x), run(fused, x)):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)
    torch.manual_seed(0)
    ref_cell = getattr(torch.nn, mode + "Cell")(6, 9).to(DEV, torch.float64)
    cell = getattr(fusedrnn, mode + "Cell")(6, 9).to(DEV, torch.float64)
    cell.load_state_dict(ref_cell.state_dict())
    xc = torch.randn(3, 6, device=DEV, dtype=torch.float64)
    e, g = ref_cell(xc), cell(xc)
    e, g = (e if isinstance(e, tuple) else (e,)), (g if isinstance(g, tuple) else (g,))
    for a, b in zip(e, g):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_no_worse_than_twice_cudnn(mode, dtype, kernel_path):
    ref32, _ = pair(mode, torch.float32, input_size=32, hidden_size=64, num_layers=2)
    ref_lp, fused_lp = pair(mode, dtype, input_size=32, hidden_size=64, num_layers=2)
    x = torch.randn(20, 8, 32, device=DEV)
    exact = run(ref32, x)
    err_torch = max_errors(run(ref_lp, x.to(dtype)), exact)
    err_fused = max_errors(run(fused_lp, x.to(dtype)), exact)
    for name, et, ef in zip(range(len(exact)), err_torch, err_fused):
        assert ef <= 2 * et + 1e-3, f"tensor {name}: fused error {ef} vs cuDNN {et}"


def test_long_sequence_within_twice_cudnn_error(kernel_path):
    ref, fused = pair("LSTM", torch.float32, input_size=8, hidden_size=32)
    x = torch.randn(16384, 2, 8, device=DEV)
    with torch.no_grad():
        exact = ref.double()(x.double())[0]
        ref.float()
        err_torch = (ref(x)[0].double() - exact).abs().max().item()
        err_fused = (fused(x)[0].double() - exact).abs().max().item()
    assert err_fused <= max(5e-5, 2 * err_torch)


def test_more_than_2_pow_31_gate_elements():
    """T*B*4H > 2^31: the last steps sit past every 32-bit offset."""
    T, B, H = 4100, 256, 512  # 4100 * 256 * 2048 = 2.15e9 gate elements
    need = T * B * 4 * H * 4 * 2.7  # xproj and gates, cells and output, in fp32
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs about {need / 2**30:.0f} GiB free GPU memory")
    torch.manual_seed(0)
    I = 8
    x = torch.randn(T, B, I, device=DEV)
    w_ih = torch.randn(4 * H, I, device=DEV) * 0.1
    w = torch.randn(4 * H, H, device=DEV) * 0.02
    h0 = torch.zeros(B, H, device=DEV)
    out, h_n, c_n, gates, cells = torch.ops.fusedrnn.lstm_forward(x, w_ih, None, w, None, h0, h0,
                                                                  None, False)
    tail = 3  # recompute the last steps from the saved state before them
    expected, exp_h, exp_c = reference.lstm_layer(x[T - tail:], w_ih, None, w, None,
                                                  out[T - tail - 1], cells[T - tail - 1])
    torch.testing.assert_close(out[T - tail:], expected, atol=5e-5, rtol=0)
    torch.testing.assert_close(c_n, exp_c, atol=5e-5, rtol=0)
    torch.testing.assert_close(gates[-1, :, 3 * H:] * cells[-1].tanh(), out[-1], atol=5e-5, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_opcheck_on_cuda(name):
    T, B, I, H = 4, 3, 5, 8
    G = 4 if name == "lstm" else 3
    x = torch.randn(T, B, I, device=DEV, requires_grad=True)
    w_ih = torch.randn(G * H, I, device=DEV, requires_grad=True)
    w = torch.randn(G * H, H, device=DEV, requires_grad=True)
    h0 = torch.randn(B, H, device=DEV, requires_grad=True)
    lens = torch.tensor([4, 2, 3], device=DEV)
    if name == "lstm":
        args = (x, w_ih, None, w, None, h0, torch.randn(B, H, device=DEV), lens, True)
        torch.library.opcheck(torch.ops.fusedrnn.lstm_forward, args)
    else:
        args = (x, w_ih, torch.randn(3 * H, device=DEV), w, None, h0, lens, False)
        torch.library.opcheck(torch.ops.fusedrnn.gru_forward, args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compile_fullgraph_reduce_overhead(mode):
    torch._dynamo.reset()
    _, fused = pair(mode, torch.float32, input_size=16, hidden_size=32, num_layers=2)
    compiled = torch.compile(fused, fullgraph=True, mode="reduce-overhead")
    x = torch.randn(6, 4, 16, device=DEV)
    eager = run(fused, x)
    for _ in range(3):  # warm-up, record, replay
        got = run(compiled, x)
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cuda_graph_capture_and_replay(mode, kernel_path):
    _, fused = pair(mode, torch.float32, input_size=16, hidden_size=32)
    static_x = torch.randn(6, 4, 16, device=DEV)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(2):
            fused(static_x)  # warm up on the side stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out, _ = fused(static_x)
    new_x = torch.randn_like(static_x)
    static_x.copy_(new_x)
    graph.replay()
    with torch.no_grad():
        expected, _ = fused(new_x)
    torch.testing.assert_close(static_out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_deterministic(mode, kernel_path):
    _, fused = pair(mode, torch.float32, input_size=16, hidden_size=48, num_layers=2,
                    bidirectional=True)
    x = torch.randn(30, 8, 16, device=DEV)
    first, second = run(fused, x), run(fused, x)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_device_mismatch_is_a_clear_error():
    _, fused = pair("LSTM", torch.float32, input_size=4, hidden_size=8)
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        fused(torch.randn(3, 2, 4))  # input on the CPU, weights on the GPU
    with pytest.raises((ValueError, RuntimeError), match="h_0"):
        fused(torch.randn(3, 2, 4, device=DEV), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))


def test_persistent_fallback_when_too_large():
    """Hidden beyond what fits on chip: a warning and the standard kernels' answer."""
    torch.manual_seed(0)
    H = torch.ops.fusedrnn_debug.persistent_max_hidden(torch.float32, 4) + 1
    x = torch.randn(3, 2, 8, device=DEV)
    w_ih = torch.randn(4 * H, 8, device=DEV) * 0.1
    w = torch.randn(4 * H, H, device=DEV) * 0.01
    h0 = torch.randn(2, H, device=DEV)
    c0 = torch.randn(2, H, device=DEV)
    ops.set_persistent("on")
    try:
        with pytest.warns(UserWarning, match="persistent"):
            got = ops.lstm_layer(x, w_ih, None, w, None, h0, c0)
    finally:
        ops.set_persistent("auto")
    expected = reference.lstm_layer(x, w_ih, None, w, None, h0, c0)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=5e-5, rtol=0)


def test_barrier_microbenchmark_runs():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    us = torch.ops.fusedrnn_debug.persistent_barrier_us(1000, sms)
    assert 0 < us < 1e6
