"""The fused ops, one layer and one direction, against fusedrnn.reference.

Also: gradcheck in fp64, torch.library.opcheck on every op, torch.compile
with fullgraph=True, and the clear error for second-order gradients.
"""

import pytest
import torch

import fusedrnn
from fusedrnn import ops, reference

pytestmark = pytest.mark.skipif(not ops.HAVE_EXTENSION, reason="needs the compiled extension")

TOL = {torch.float64: 1e-10, torch.float32: 5e-5}


def make_lstm_inputs(T, B, H, P, dtype, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = P or H
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()
    xproj = r(T, B, 4 * H)
    w_hh = r(4 * H, width, scale=0.3)
    w_hr = r(P, H, scale=0.3) if P else None
    h0, c0 = r(B, width), r(B, H)
    lens = None if lengths is None else torch.tensor(lengths)
    return xproj, w_hh, w_hr, h0, c0, lens


def make_gru_inputs(T, B, H, dtype, bias=True, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()
    xproj = r(T, B, 3 * H)
    w_hh = r(3 * H, H, scale=0.3)
    b_hh = r(3 * H) if bias else None
    h0 = r(B, H)
    lens = None if lengths is None else torch.tensor(lengths)
    return xproj, w_hh, b_hh, h0, lens


def grads_of(outputs, inputs, seed=1):
    """Gradients of a random linear function of ``outputs`` w.r.t. ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    wanted = [x for x in inputs if x is not None]
    return torch.autograd.grad(loss, wanted)


def assert_close_all(actual, expected, tol):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=tol, rtol=0)


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
def test_lstm_op_matches_reference(T, B, H, P, lengths, reverse, dtype):
    xproj, w_hh, w_hr, h0, c0, lens = make_lstm_inputs(T, B, H, P, dtype, lengths)
    inputs = (xproj, w_hh, w_hr, h0, c0)
    fused = ops.lstm_layer(xproj, w_hh, w_hr, h0, c0, lens, reverse)
    expected = reference.lstm_layer(xproj, w_hh, w_hr, h0, c0, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, inputs), grads_of(expected, inputs), TOL[dtype])


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
def test_gru_op_matches_reference(T, B, H, bias, lengths, reverse, dtype):
    xproj, w_hh, b_hh, h0, lens = make_gru_inputs(T, B, H, dtype, bias, lengths)
    inputs = (xproj, w_hh, b_hh, h0)
    fused = ops.gru_layer(xproj, w_hh, b_hh, h0, lens, reverse)
    expected = reference.gru_layer(xproj, w_hh, b_hh, h0, lens, reverse)
    assert_close_all(fused, expected, TOL[dtype])
    assert_close_all(grads_of(fused, inputs), grads_of(expected, inputs), TOL[dtype])


def test_longer_sequence_fp32_no_worse_than_twice_torch():
    """At T = 256 fp32 error may grow; it must stay within 2x torch.nn's own."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(16, 32)
    fused = fusedrnn.LSTM(16, 32)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(256, 4, 16)
    exact = ref.double()(x.double())[0]
    ref.float()
    err_torch = (ref(x)[0].double() - exact).abs().max().item()
    err_fused = (fused(x)[0].double() - exact).abs().max().item()
    assert err_fused <= 2 * err_torch + 1e-6


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("P", [0, 3])
def test_lstm_gradcheck(P, reverse):
    xproj, w_hh, w_hr, h0, c0, lens = make_lstm_inputs(4, 3, 5, P, torch.float64, [4, 2, 3])
    args = [a for a in (xproj, w_hh, w_hr, h0, c0) if a is not None]

    def f(*a):
        it = iter(a)
        xp, whh = next(it), next(it)
        whr = next(it) if P else None
        return ops.lstm_layer(xp, whh, whr, next(it), next(it), lens, reverse)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_gradcheck(reverse):
    xproj, w_hh, b_hh, h0, lens = make_gru_inputs(4, 3, 5, torch.float64, True, [4, 2, 3])
    f = lambda xp, w, b, h: ops.gru_layer(xp, w, b, h, lens, reverse)
    assert torch.autograd.gradcheck(f, (xproj, w_hh, b_hh, h0))


def _opcheck_samples():
    lstm = make_lstm_inputs(4, 3, 6, 0, torch.float32)
    lstm_proj = make_lstm_inputs(4, 3, 6, 4, torch.float32, [4, 1, 3])
    gru = make_gru_inputs(4, 3, 6, torch.float32, True, [2, 4, 3])
    gru_nobias = make_gru_inputs(4, 3, 6, torch.float32, False)
    samples = []
    for (xp, w, wr, h, c, lens), rev in ((lstm, False), (lstm_proj, True)):
        samples.append(("lstm_forward", (xp, w, wr, h, c, lens, rev)))
        samples.append(("lstm_forward", (xp.detach(), w.detach(), None if wr is None else
                                          wr.detach(), h.detach(), c.detach(), lens, rev, False)))
        out, h_n, c_n, gates, cells = torch.ops.fusedrnn.lstm_forward(xp, w, wr, h, c, lens, rev)
        grads = [torch.randn_like(t) for t in (out, h_n, c_n)]
        samples.append(("lstm_backward", (*grads, w.detach(), None if wr is None else wr.detach(),
                                          h.detach(), c.detach(), out.detach(), gates, cells,
                                          lens, rev)))
    for (xp, w, b, h, lens), rev in ((gru, False), (gru_nobias, True)):
        samples.append(("gru_forward", (xp, w, b, h, lens, rev)))
        samples.append(("gru_forward", (xp.detach(), w.detach(), None if b is None else
                                         b.detach(), h.detach(), lens, rev, False)))
        out, h_n, gates = torch.ops.fusedrnn.gru_forward(xp, w, b, h, lens, rev)
        grads = [torch.randn_like(t) for t in (out, h_n)]
        samples.append(("gru_backward", (*grads, w.detach(), h.detach(), out.detach(), gates,
                                         lens, rev)))
    return samples


@pytest.mark.parametrize("name,args", _opcheck_samples(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.fusedrnn, name), args)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
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
    xproj = torch.randn(4, 2, 12)
    gates = torch.ops.fusedrnn.gru_forward(xproj, torch.randn(12, 4), None, torch.zeros(2, 4),
                                           None, False, False)[2]
    assert gates.shape == (0, 2, 16)


def test_backward_without_saved_state_is_a_clear_error():
    xproj = torch.randn(4, 2, 12, requires_grad=True)
    out, _, _ = torch.ops.fusedrnn.gru_forward(xproj, torch.randn(12, 4), None, torch.zeros(2, 4),
                                               None, False, False)
    with pytest.raises(RuntimeError, match="save_for_backward=False"):
        out.sum().backward()


def test_second_order_gradients_raise():
    xproj, w_hh, w_hr, h0, c0, _ = make_lstm_inputs(3, 2, 4, 0, torch.float64)
    out, _, _ = ops.lstm_layer(xproj, w_hh, None, h0, c0)
    (g,) = torch.autograd.grad(out.square().sum(), w_hh, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order"):
        g.sum().backward()


# Inductor (the default backend) once; aot_eager, which traces the same
# graphs without generating code, for the other cell to keep CI short.
@pytest.mark.parametrize("mode,backend", [("LSTM", "inductor"), ("GRU", "aot_eager")])
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
