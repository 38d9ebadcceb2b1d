"""What only a GPU can show: CUDA graph capture and replay, torch.compile with
reduce-overhead (CUDA graphs), a > 2^31-element case, tensors on two devices.

Parity, opcheck, determinism, long sequences and the persistent kernels on CUDA are the
``cuda`` device cases of the other test files (tests/devices.py; ``pytest -m cuda``).
Skipped without a GPU.
"""

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
    ops.set_persistent("on" if request.param == "persistent" else "off")
    yield request.param
    ops.set_persistent("auto")


def pair(mode, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(**kw).to(DEV, dtype)
    fused = getattr(fusedrnn, mode)(**kw).to(DEV, dtype)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def run(module, x):
    """Output, final states and gradients of x and every parameter."""
    module.zero_grad()
    x = x.detach().requires_grad_()
    out, state = module(x)
    states = list(state) if isinstance(state, tuple) else [state]
    g = torch.Generator(device=DEV).manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=g, device=DEV)).sum()
    loss = loss + sum(s.float().sum() for s in states)
    loss.backward()
    return [out, *states, x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("persistent", [False, True], ids=["standard", "persistent"])
def test_more_than_2_pow_31_gate_elements(persistent):
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
    if persistent:  # B=256, H=512 fits on chip: it must not fall back
        assert H <= torch.ops.fusedrnn_debug.persistent_max_hidden(torch.float32, 4)
    out, h_n, c_n, gates, cells = torch.ops.fusedrnn.lstm_forward(x, w_ih, None, w, None, h0, h0,
                                                                  None, False, True, persistent)
    tail = 3  # recompute the last steps from the saved state before them
    expected, exp_h, exp_c = reference.lstm_layer(x[T - tail:], w_ih, None, w, None,
                                                  out[T - tail - 1], cells[T - tail - 1])
    torch.testing.assert_close(out[T - tail:], expected, atol=5e-5, rtol=0)
    torch.testing.assert_close(c_n, exp_c, atol=5e-5, rtol=0)
    torch.testing.assert_close(gates[-1, :, 3 * H:] * cells[-1].tanh(), out[-1], atol=5e-5, rtol=0)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
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


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
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


def test_device_mismatch_is_a_clear_error():
    _, fused = pair("LSTM", torch.float32, input_size=4, hidden_size=8)
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        fused(torch.randn(3, 2, 4))  # input on the CPU, weights on the GPU
    with pytest.raises((ValueError, RuntimeError), match="h_0"):
        fused(torch.randn(3, 2, 4, device=DEV), (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
