"""The fused ops, one layer and one direction, against fusedrnn.reference.

The parity and opcheck tests run on every device (tests/devices.py: cpu, simt, cuda;
standard and persistent kernels). Also: gradcheck in fp64, torch.compile with
fullgraph=True, and the clear error for second-order gradients.
"""

import contextlib
import functools

import pytest
import torch

import fusedrnn
from fusedrnn import ops, reference, registration
from fusedrnn.bench.load import busy_processes

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="needs the compiled extension")

TOL = reference.TOLERANCE


I = 5  # input size of every op test


def _random(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()


def make_lstm_inputs(T, B, H, P, dtype, lengths=None, seed=0, bias=True):
    """``(x, w_ih, bias, w_hh, w_hr, h0, c0)`` and the lengths, in the ops' argument order."""
    r = _random(dtype, seed)
    h_size = P or H
    inputs = (r(T, B, I), r(4 * H, I, scale=0.5), r(4 * H) if bias else None,
              r(4 * H, h_size, scale=0.3), r(P, H, scale=0.3) if P else None,
              r(B, h_size), r(B, H))
    return inputs, None if lengths is None else torch.tensor(lengths)


def make_gru_inputs(T, B, H, dtype, bias=True, lengths=None, seed=0):
    """``(x, w_ih, b_ih, w_hh, b_hh, h0)`` and the lengths, in the ops' argument order."""
    r = _random(dtype, seed)
    inputs = (r(T, B, I), r(3 * H, I, scale=0.5), r(3 * H) if bias else None,
              r(3 * H, H, scale=0.3), r(3 * H) if bias else None, r(B, H))
    return inputs, None if lengths is None else torch.tensor(lengths)


def make_rnn_inputs(T, B, H, dtype, bias=True, lengths=None, seed=0):
    """``(x, w_ih, bias, w_hh, h0)`` and the lengths, in the ops' argument order."""
    r = _random(dtype, seed)
    inputs = (r(T, B, I), r(H, I, scale=0.5), r(H) if bias else None, r(H, H, scale=0.3),
              r(B, H))
    return inputs, None if lengths is None else torch.tensor(lengths)


def rnn_layers(nonlinearity: str) -> tuple:
    """``(fused layer, reference layer)`` of the Elman RNN with ``nonlinearity``."""
    return (functools.partial(ops.rnn_layer, nonlinearity=nonlinearity),
            functools.partial(reference.rnn_layer, nonlinearity=nonlinearity))


def layer_case(cell, T, B, H, dtype, lengths=None):
    """A plain layer (biases, no projection) of ``cell`` ("lstm"/"LSTM", "gru"/"GRU",
    "rnn_tanh"/"RNN_TANH", "rnn_relu"/"RNN_RELU"): ``(inputs, lengths, fused layer,
    reference layer)``."""
    if cell.lower() == "lstm":
        inputs, lens = make_lstm_inputs(T, B, H, 0, dtype, lengths)
        return inputs, lens, ops.lstm_layer, reference.lstm_layer
    if cell.lower().startswith("rnn"):
        inputs, lens = make_rnn_inputs(T, B, H, dtype, True, lengths)
        return (inputs, lens, *rnn_layers(cell.lower().removeprefix("rnn_")))
    inputs, lens = make_gru_inputs(T, B, H, dtype, True, lengths)
    return inputs, lens, ops.gru_layer, reference.gru_layer


def grads_of(outputs, inputs, seed=1):
    """Gradients of a random linear function of ``outputs`` w.r.t. ``inputs``
    (zeros for an input the outputs do not depend on, e.g. x when T = 0)."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum()
               for o in outputs)
    wanted = [x for x in inputs if x is not None]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    return [torch.zeros_like(x) if gx is None else gx for x, gx in zip(wanted, grads)]


def assert_close_all(actual, expected, tol):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        torch.testing.assert_close(a.cpu(), e.cpu(), atol=tol, rtol=0)


def leaves_on(target, inputs):
    """Fresh leaves on the target's device with the values of ``inputs``."""
    return tuple(None if t is None else target.to(t.detach()).requires_grad_()
                 for t in inputs)


@pytest.fixture(params=["step_loop", "persistent"])
def cpu_path(request):
    """Each CPU test runs on the step loop (persistent off) and the persistent loop (forced on)."""
    ops.set_persistent("off" if request.param == "step_loop" else "on")
    yield request.param
    ops.set_persistent("auto")


LSTM_CASES = [
    # T, B, H, P, lengths, reverse
    (5, 3, 8, 0, None, False),
    (5, 3, 7, 0, None, True),
    (1, 2, 13, 0, None, False),
    (6, 4, 9, 5, None, False),
    (6, 4, 9, 5, [6, 2, 4, 1], True),
    (6, 4, 7, 0, [3, 6, 1, 6], False),
    (6, 4, 7, 0, [3, 6, 0, 6], True),
    (4, 0, 7, 0, None, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H,P,lengths,reverse", LSTM_CASES)
def test_lstm_op_matches_reference(T, B, H, P, lengths, reverse, dtype, device_path):
    inputs, lens = make_lstm_inputs(T, B, H, P, dtype, lengths, bias=H != 7)
    on_device = leaves_on(device_path, inputs)
    fused = ops.lstm_layer(*on_device, lens, reverse)
    expected = reference.lstm_layer(*inputs, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, on_device), grads_of(expected, inputs), TOL[dtype])


GRU_CASES = [
    # T, B, H, bias, lengths, reverse
    (5, 3, 8, True, None, False),
    (5, 3, 7, False, None, True),
    (1, 2, 13, True, None, False),
    (6, 4, 9, True, [6, 2, 4, 1], True),
    (6, 4, 7, True, [3, 6, 0, 6], False),
    (4, 0, 7, True, None, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H,bias,lengths,reverse", GRU_CASES)
def test_gru_op_matches_reference(T, B, H, bias, lengths, reverse, dtype, device_path):
    inputs, lens = make_gru_inputs(T, B, H, dtype, bias, lengths)
    on_device = leaves_on(device_path, inputs)
    fused = ops.gru_layer(*on_device, lens, reverse)
    expected = reference.gru_layer(*inputs, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, on_device), grads_of(expected, inputs), TOL[dtype])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H,bias,lengths,reverse", GRU_CASES)
def test_rnn_op_matches_reference(T, B, H, bias, lengths, reverse, dtype, nonlinearity,
                                  device_path):
    inputs, lens = make_rnn_inputs(T, B, H, dtype, bias, lengths)
    fused_layer, reference_layer = rnn_layers(nonlinearity)
    on_device = leaves_on(device_path, inputs)
    fused = fused_layer(*on_device, lens, reverse)
    expected = reference_layer(*inputs, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, on_device), grads_of(expected, inputs), TOL[dtype])


# Longer than the 5e-5 rule covers (T <= 64): T = 16384 on a GPU, shorter where the
# kernels run on the CPU.
LONG_T = {"cpu": 256, "simt": 128, "cuda": 16384}


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_longer_sequence_fp32_no_worse_than_twice_torch(mode, device_path):
    """At long T fp32 error may grow; it must stay within 2x torch.nn's own (torch.nn
    on the CPU, against fp64)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(8, 32)
    fused = getattr(fusedrnn, mode)(8, 32)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(LONG_T[device_path.name], 2, 8)
    with torch.no_grad():
        exact = ref.double()(x.double())[0]
        ref.float()
        err_torch = (ref(x)[0].double() - exact).abs().max().item()
        err_fused = (device_path.to(fused)(device_path.to(x))[0].cpu().double() - exact)
    assert err_fused.abs().max().item() <= max(5e-5, 2 * err_torch)


def _over_present(layer, inputs, lens, reverse):
    """``(f, args)``: ``f(*args)`` runs ``layer`` with ``args`` in place of the
    inputs that are not None (what gradcheck perturbs)."""
    present = [i for i, t in enumerate(inputs) if t is not None]

    def f(*args):
        full = list(inputs)
        for i, a in zip(present, args):
            full[i] = a
        return layer(*full, lens, reverse)

    return f, [inputs[i] for i in present]


LSTM_GRADCHECK = [(0, True, False), (3, True, True), (0, False, True), (3, False, False)]
GRU_GRADCHECK = [(True, False), (False, True)]


@pytest.mark.parametrize("P,bias,reverse", LSTM_GRADCHECK)
def test_lstm_gradcheck_and_gradgradcheck(P, bias, reverse):
    inputs, lens = make_lstm_inputs(4, 3, 5, P, torch.float64, [4, 2, 3], bias=bias)
    f, args = _over_present(ops.lstm_layer, inputs, lens, reverse)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("bias,reverse", GRU_GRADCHECK)
def test_gru_gradcheck_and_gradgradcheck(bias, reverse):
    inputs, lens = make_gru_inputs(4, 3, 5, torch.float64, bias, [4, 2, 3])
    f, args = _over_present(ops.gru_layer, inputs, lens, reverse)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias,reverse", GRU_GRADCHECK)
def test_rnn_gradcheck_and_gradgradcheck(bias, reverse, nonlinearity):
    inputs, lens = make_rnn_inputs(4, 3, 5, torch.float64, bias, [4, 2, 3])
    f, args = _over_present(rnn_layers(nonlinearity)[0], inputs, lens, reverse)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def _detached(inputs):
    return tuple(None if t is None else t.detach() for t in inputs)


def _schema_tensors(op, sizes: dict, bias: bool, P: int, seed: int) -> list:
    """Random tensor arguments of ``op`` (a forward op), by their names in its schema."""
    T, B, I, H, G = sizes["T"], sizes["B"], sizes["I"], sizes["H"], sizes["G"]
    r = _random(torch.float32, seed)
    h_size = P or H
    shapes = {"input": (T, B, I), "xproj": (T, B, G * H), "w_ih": (G * H, I),
              "bias": (G * H,), "b_ih": (G * H,), "b_hh": (G * H,), "hh_weight": (G * H,),
              "hh_bias": (G * H,), "c_weight": (H,), "c_bias": (H,), "h0": (B, h_size),
              "c0": (B, H), "w_hr": (P, H), "w_hh": (G * H, H if "xproj" in _names(op) else h_size)}
    tensors = []
    for name in _names(op)[:_names(op).index("lengths")]:
        if (name in ("bias", "b_ih", "b_hh") and not bias) or (name == "w_hr" and not P):
            tensors.append(None)
        else:
            tensors.append(r(*shapes[name], scale=0.3 if name.startswith("w_") else 1.0))
    return tensors


def _names(op) -> list:
    return [a.name for a in op.default._schema.arguments]


def _opcheck_samples(target):
    """``[(op, args)]`` on the target's device: every cell's forward ops (the layer's
    and layer_norm's) training and inference, and their backward ops with and without
    the input's gradient."""
    op_ns, samples = ops._ops(), []
    path = ("persistent" if target.persistent else "steps",)
    for cell, spec in registration.CELLS.items():
        sizes = dict(T=4, B=3, I=I, H=6, G=spec.gates)
        cases = [(0, None, False, True), (4 if cell == "lstm" else 0, [4, 1, 3], True, False)]
        for family in ("forward", "norm_forward"):
            forward = getattr(op_ns, f"{cell}_{family}")
            backward = getattr(op_ns, f"{cell}_{family.replace('forward', 'backward')}")
            flags = path if family == "forward" else ()
            for P, lengths, rev, bias in cases:
                P = P if family == "forward" else 0
                inputs = leaves_on(target, _schema_tensors(forward, sizes, bias, P, seed=len(samples)))
                lens = None if lengths is None else target.to(torch.tensor(lengths))
                samples.append((forward, (*inputs, lens, rev, True, *flags)))
                samples.append((forward, (*_detached(inputs), lens, rev, False, *flags)))
                outputs = forward(*inputs, lens, rev, True, *flags)
                results = outputs[:spec.results]
                grads = [torch.randn_like(t) for t in results]
                for grad_input in ((True, False) if family == "forward" else (None,)):
                    backward_flags = (grad_input, *flags) if family == "forward" else ()
                    samples.append((backward, (*grads, *_detached(inputs), results[0].detach(),
                                               *outputs[spec.results:], lens, rev,
                                               *backward_flags)))
    return samples


def test_opcheck(device_path):
    """torch.library.opcheck on every op of the device's namespace (schema, fake kernel,
    autograd registration), with the persistent argument where the device has that path."""
    for op, args in _opcheck_samples(device_path):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_inference_saves_nothing_and_matches_training_forward(mode):
    torch.manual_seed(0)
    model = getattr(fusedrnn, mode)(5, 9, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 5)
    lengths = torch.tensor([6, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    for inp in (x, packed):
        train_out, train_state = model(inp)
        with torch.no_grad():
            infer_out, infer_state = model(inp)
        data = lambda o: o.data if isinstance(o, torch.nn.utils.rnn.PackedSequence) else o
        assert torch.equal(data(train_out), data(infer_out))
        flat = lambda s: list(s) if isinstance(s, tuple) else [s]
        for a, b in zip(flat(train_state), flat(infer_state)):
            assert torch.equal(a, b)
    inputs, _ = make_gru_inputs(4, 2, 4, torch.float32)
    gates = torch.ops.fusedrnn.gru_forward(*_detached(inputs), None, False, False)[2]
    assert gates.shape == (0, 2, 16)


def test_backward_without_saved_state_is_a_clear_error():
    inputs, _ = make_gru_inputs(4, 2, 4, torch.float32)
    out, _, _ = torch.ops.fusedrnn.gru_forward(*inputs, None, False, False)
    with pytest.raises(RuntimeError, match="save_for_backward=False"):
        out.sum().backward()


def test_backward_op_differentiated_directly_raises():
    inputs, _ = make_lstm_inputs(3, 2, 4, 0, torch.float64)
    x, w_ih, bias, w_hh, w_hr, h0, c0 = inputs
    out, h_n, c_n, gates, cells = torch.ops.fusedrnn.lstm_forward(*inputs, None, False)
    grads = torch.ops.fusedrnn.lstm_backward(out.detach(), h_n.detach(), c_n.detach(), x, w_ih,
                                             bias, w_hh, None, h0, c0, out, gates, cells, None,
                                             False)
    with pytest.raises(RuntimeError, match="not differentiable"):
        grads[3].sum().backward()


def _bad_backward_args():
    """lstm_backward with one saved tensor of the wrong size or dtype at a time."""
    inputs, _ = make_lstm_inputs(6, 3, 4, 0, torch.float32)
    x, w_ih, bias, w_hh, w_hr, h0, c0 = _detached(inputs)
    out, h_n, c_n, gates, cells = torch.ops.fusedrnn.lstm_forward(x, w_ih, bias, w_hh, w_hr, h0,
                                                                  c0, None, False)
    args = dict(grad_output=out, grad_h_n=h_n, grad_c_n=c_n, input=x, w_ih=w_ih, bias=bias,
                w_hh=w_hh, w_hr=None, h0=h0, c0=c0, output=out, gates=gates, cells=cells,
                lengths=None, reverse=False)
    return args, [("cells", cells[:2]), ("c0", c0[:1]), ("h0", h0[:, :2]),
                  ("output", out[:, :2]), ("gates", gates[..., :-1]),
                  ("gates", gates.double()), ("lengths", torch.tensor([1, 2, 3], dtype=torch.int32)),
                  ("grad_output", out.double())]


@pytest.mark.parametrize("index", range(8))
def test_backward_op_checks_every_saved_tensor(index):
    args, bad = _bad_backward_args()
    name, value = bad[index]
    args[name] = value
    with pytest.raises(RuntimeError, match=f"fusedrnn.lstm_backward: {name}"):
        torch.ops.fusedrnn.lstm_backward(*args.values())


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int32, torch.complex64])
def test_unsupported_dtype_is_refused_by_name(dtype):
    x = torch.zeros(2, 1, 3).to(dtype)
    w = torch.zeros(8, 3).to(dtype)
    with pytest.raises(RuntimeError, match="float32, float64, float16 and bfloat16"):
        torch.ops.fusedrnn.lstm_forward(x, w, None, torch.zeros(8, 2).to(dtype), None,
                                        torch.zeros(1, 2).to(dtype), torch.zeros(1, 2).to(dtype),
                                        None, False)


PERSISTENT_CASES = [
    # T, B, H, lengths, reverse: two threads with a partial last slice (H = 72),
    # one thread, H below one SIMD vector, batch 1, lengths both ways, empty sizes
    (12, 4, 72, None, False),
    (12, 4, 72, [12, 2, 4, 5], True),
    (12, 4, 72, [3, 12, 0, 5], False),
    (6, 3, 40, None, False),
    (6, 3, 40, [6, 2, 4], True),
    (5, 4, 7, [3, 5, 0, 5], False),
    (7, 1, 64, None, True),
    (4, 2, 33, [4, 1], False),
    (0, 2, 8, None, False),
    (3, 0, 8, None, False),
]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H,lengths,reverse", PERSISTENT_CASES)
def test_cpu_paths_match_reference(cell, T, B, H, lengths, reverse, dtype, cpu_path):
    inputs, lens, layer, expected_layer = layer_case(cell, T, B, H, dtype, lengths)
    fused = layer(*inputs, lens, reverse)
    expected = expected_layer(*inputs, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, inputs), grads_of(expected, inputs), TOL[dtype])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_all_step_gemms_match_reference_at_tile_edges(cell, cpu_path):
    """The fp32 GEMMs over all steps (the input projection, the input's and the weights'
    gradients; cpu/gemm.cpp: tiles of 64 rows, panels of up to 256 columns in blocks of
    32, depth slices of 256) at sizes where each has a partial tile, panel, block and
    slice: T * B = 450 rows, I = 300, G * H = 280 (LSTM) or 210 (GRU). The LSTM's weight
    gradients are over csrc/layer/gemms.cpp's kMinTnGemmFmas, so they run there too. Two
    threads, so that the tiles are split between them."""
    T, B, I, H = 50, 9, 300, 70
    gates = 4 if cell == "lstm" else 3
    g = torch.Generator().manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).requires_grad_()
    w_ih, w_hh = r(gates * H, I, scale=I ** -0.5), r(gates * H, H, scale=H ** -0.5)
    if cell == "lstm":
        inputs = (r(T, B, I), w_ih, r(4 * H), w_hh, None, r(B, H), r(B, H))
        layer, expected_layer = ops.lstm_layer, reference.lstm_layer
    else:
        inputs = (r(T, B, I), w_ih, r(3 * H), w_hh, r(3 * H), r(B, H))
        layer, expected_layer = ops.gru_layer, reference.gru_layer
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fused = layer(*inputs)
        fused_grads = grads_of(fused, inputs)
    finally:
        torch.set_num_threads(saved)
    expected = expected_layer(*inputs)
    assert_close_all(fused, expected, TOL[torch.float32])
    assert_close_all(fused_grads, grads_of(expected, inputs), TOL[torch.float32])


@pytest.mark.parametrize("cell", ["lstm", "lstm_projected", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (1, 8), (1, 9), (3, 3)])
def test_few_row_products_match_reference(cell, T, B, dtype):
    """cpu::weight_product (cpu/gemm.h), a streaming step's products at up to 8 rows:
    x @ W_ih^T, h @ W_hh^T and h @ W_hr^T; B = 9 takes ATen's GEMM. On the step loop
    (persistent off), two threads. I = 300, H = 75, P = 29: dot products with a
    partial SIMD chunk, groups of four rows of W with a tail (3H = 225, P = 29), and
    enough work in x @ W_ih^T at B = 1 for both threads."""
    I, H = 300, 75
    r = _random(dtype, seed=0)
    if cell == "gru":
        inputs = (r(T, B, I), r(3 * H, I, scale=I ** -0.5), r(3 * H),
                  r(3 * H, H, scale=H ** -0.5), r(3 * H), r(B, H))
        layer, expected_layer = ops.gru_layer, reference.gru_layer
    else:
        P = 29 if cell == "lstm_projected" else 0
        inputs = (r(T, B, I), r(4 * H, I, scale=I ** -0.5), r(4 * H),
                  r(4 * H, P or H, scale=(P or H) ** -0.5),
                  r(P, H, scale=H ** -0.5) if P else None, r(B, P or H), r(B, H))
        layer, expected_layer = ops.lstm_layer, reference.lstm_layer
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    ops.set_persistent("off")
    try:
        fused = layer(*inputs)
        fused_grads = grads_of(fused, inputs)
    finally:
        torch.set_num_threads(saved)
        ops.set_persistent("auto")
    expected = expected_layer(*inputs)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(fused_grads, grads_of(expected, inputs), TOL[dtype])


def test_persistent_cpu_loop_splits_the_units_over_threads():
    """The cases above with T = 12, B = 4, H = 72 run on two threads when two are there."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threads = torch.ops.fusedrnn_debug.cpu_persistent_threads
        assert threads(12, 4, 72, 4) == 2 and threads(12, 4, 72, 3) == 2
        assert threads(6, 3, 40, 4) == 1 and threads(6, 3, 40, 3) == 1
        assert threads(1, 1, 128, 4) == 1  # a streaming call stays on one thread
    finally:
        torch.set_num_threads(saved)


# The persistent CPU loop on 1, 2 and 3 threads (3 on this 2-core machine: more threads
# than cores, so tiles are taken over), at a size that is worth 3 threads to every cell.
THREADS_CASE = dict(T=12, B=8, H=96)


@contextlib.contextmanager
def torch_threads(n):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def persistent_on_threads(cell, dtype, lengths, reverse, threads, calls=1):
    """The persistent loop's results and gradients on ``threads`` threads (each of
    ``calls`` calls checked against the reference), after checking that it takes them."""
    T, B, H = THREADS_CASE.values()
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    inputs, lens, layer, expected_layer = layer_case(cell, T, B, H, dtype, lengths)
    # W_hh at H ** -0.5 (the op tests' small-H scale would make the gradients grow
    # with the steps at this H: a test of conditioning, not of the threads).
    g = torch.Generator().manual_seed(1)
    w_hh = torch.randn(inputs[3].shape, generator=g, dtype=dtype) * H ** -0.5
    inputs = (*inputs[:3], w_hh.requires_grad_(), *inputs[4:])
    expected = expected_layer(*inputs, lens, reverse)
    expected_grads = grads_of(expected, inputs)
    ops.set_persistent("on")
    try:
        with torch_threads(threads):
            assert torch.ops.fusedrnn_debug.cpu_persistent_threads(T, B, H, gates) == threads
            for _ in range(calls):
                fused = layer(*inputs, lens, reverse)
                assert_close_all(fused, expected, TOL[dtype])
                assert_close_all(grads_of(fused, inputs), expected_grads, TOL[dtype])
    finally:
        ops.set_persistent("auto")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([12, 3, 11, 0, 12, 7, 1, 9], True)],
                         ids=["full", "lengths-reverse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_persistent_cpu_loop_matches_reference_on_any_thread_count(cell, dtype, lengths,
                                                                    reverse, threads):
    persistent_on_threads(cell, dtype, lengths, reverse, threads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_persistent_cpu_loop_under_contention(dtype):
    """Two busy processes on the cores, three threads: threads are descheduled in the
    middle of a sequence, other threads take over their tiles (the debug counter shows
    it), and every call still matches the reference, forward and backward."""
    before = torch.ops.fusedrnn_debug.cpu_tiles_taken_over()
    with busy_processes(2):
        persistent_on_threads("lstm", dtype, [12, 3, 11, 0, 12, 7, 1, 9], True, threads=3,
                              calls=20)
    assert torch.ops.fusedrnn_debug.cpu_tiles_taken_over() > before


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("T,B", [(1, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_never_modify_their_inputs(cell, T, B, dtype):
    """One row in all (T * B == 1) once made the input GEMM accumulate into the bias."""
    make = make_lstm_inputs if cell == "lstm" else make_gru_inputs
    inputs, _ = make(T, B, 6, 0, dtype) if cell == "lstm" else make(T, B, 6, dtype)
    before = [None if t is None else t.detach().clone() for t in inputs]
    layer = ops.lstm_layer if cell == "lstm" else ops.gru_layer
    outputs = layer(*inputs)
    grads_of(outputs, inputs)
    for t, saved in zip(inputs, before):
        assert t is None or torch.equal(t, saved)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_module_double_backward_matches_torch(mode):
    """A gradient penalty: d/dw of |d loss / d x|^2, through the whole module."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(3, 4, num_layers=2, bidirectional=True).double()
    fused = getattr(fusedrnn, mode)(3, 4, num_layers=2, bidirectional=True).double()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def penalty_grads(m):
        xi = x.clone().requires_grad_()
        out, _ = m(xi)
        (gx,) = torch.autograd.grad(out.tanh().sum(), xi, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(m.parameters()))

    assert_close_all(penalty_grads(fused), penalty_grads(ref), TOL[torch.float64])


# Inductor (the default backend) once; aot_eager, which traces the same
# graphs without generating code, for the other cell to keep CI short.
@pytest.mark.parametrize("mode,backend", [("LSTM", "inductor"), ("GRU", "aot_eager"),
                                          ("RNN", "aot_eager")])
def test_torch_compile_fullgraph_matches_eager(mode, backend):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = getattr(fusedrnn, mode)(6, 8, num_layers=2, bidirectional=True, batch_first=True)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(3, 5, 6, requires_grad=True)

    def run(m):
        x.grad = None
        m.zero_grad()
        out, _ = m(x)
        out.square().sum().backward()
        return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in m.parameters()]

    eager, comp = run(model), run(compiled)
    assert_close_all(comp, eager, 1e-6)


def test_torch_nn_lstm_does_not_compile_fullgraph():
    """The advantage claimed in the README: torch.nn.LSTM graph-breaks under fullgraph."""
    torch._dynamo.reset()
    compiled = torch.compile(torch.nn.LSTM(4, 4), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="(?i)rnn|lstm"):
        compiled(torch.randn(2, 1, 4))


def test_backend_reports_fused_path():
    assert fusedrnn.backend() == "fused"
    assert fusedrnn.build_info().startswith("cpu:")


def test_missing_extension_falls_back_to_reference_with_one_warning():
    """Without fusedrnn._C, import warns once and the modules run reference.py."""
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "sys.modules['fusedrnn._C'] = None  # makes `from . import _C` raise ImportError\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, fusedrnn\n"
        "    import fusedrnn.ops\n"
        "msgs = [str(x.message) for x in w if 'fusedrnn._C' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert fusedrnn.backend() == 'reference', fusedrnn.backend()\n"
        "torch.manual_seed(0)\n"
        "ref = torch.nn.GRU(3, 4); m = fusedrnn.GRU(3, 4); m.load_state_dict(ref.state_dict())\n"
        "x = torch.randn(5, 2, 3)\n"
        "torch.testing.assert_close(m(x)[0], ref(x)[0], atol=5e-5, rtol=0)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
