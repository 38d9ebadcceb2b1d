"""Bad input raises a clear exception naming the argument and what was expected / given;
edge-case input (empty batch, NaN in one sequence, non-contiguous tensors) gives the right
result."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from conftest import TOL, assert_results_close, make_pair, run

F64 = torch.float64
KINDS = ["LSTM", "GRU"]


def _model(kind, **kwargs):
    return getattr(fusedrnn, kind)(3, 5, num_layers=2, **kwargs)


def _hx(kind, h0, c0=None):
    return (h0, h0 if c0 is None else c0) if kind == "LSTM" else h0


# ------------------------------------------------------------- input shape


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(3,), (4, 2, 2, 3)], ids=["1d", "4d"])
def test_wrong_input_rank(kind, shape):
    with pytest.raises(ValueError, match=rf"input must be 2-D .* or 3-D .*got a {len(shape)}-D "
                                         rf"tensor of shape \({', '.join(map(str, shape))},?\)"):
        _model(kind)(torch.randn(shape))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_wrong_feature_size(kind, batched):
    x = torch.randn(4, 2, 4) if batched else torch.randn(4, 4)
    shape = r"\(4, 2, 4\)" if batched else r"\(4, 4\)"
    with pytest.raises(ValueError, match=rf"input_size=3.*{shape}"):
        _model(kind)(x)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_h0_shape(kind):
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 5\), got \(2, 3, 5\)"):
        _model(kind)(x, _hx(kind, torch.zeros(2, 3, 5)))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 5\), got \(1, 2, 5\)"):
        _model(kind)(x, _hx(kind, torch.zeros(1, 2, 5), torch.zeros(2, 2, 5)))


def test_wrong_c0_shape():
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 5\), got \(2, 2, 4\)"):
        _model("LSTM")(x, (torch.zeros(2, 2, 5), torch.zeros(2, 2, 4)))


def test_wrong_h0_shape_with_projection():
    m = fusedrnn.LSTM(3, 5, proj_size=2)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(1, 2, 2\), got \(1, 2, 5\)"):
        m(torch.randn(4, 2, 3), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))


@pytest.mark.parametrize("kind", KINDS)
def test_state_rank_must_match_input_rank(kind):
    m = _model(kind)
    with pytest.raises(ValueError, match=r"h_0 must be 3-D for batched 3-D input.*\(2, 2, 5\)"
                                         r".*2-D tensor of shape \(2, 5\)"):
        m(torch.randn(4, 2, 3), _hx(kind, torch.zeros(2, 5)))
    with pytest.raises(ValueError, match=r"h_0 must be 2-D for unbatched 2-D input.*\(2, 5\)"
                                         r".*3-D tensor of shape \(2, 1, 5\)"):
        m(torch.randn(4, 3), _hx(kind, torch.zeros(2, 1, 5)))


def test_c0_rank_must_match_input_rank():
    with pytest.raises(ValueError, match=r"c_0 must be 3-D for batched 3-D input"):
        _model("LSTM")(torch.randn(4, 2, 3), (torch.zeros(2, 2, 5), torch.zeros(2, 5)))


# ------------------------------------------------------------ hx structure


def test_lstm_hx_must_be_a_tuple():
    with pytest.raises(TypeError, match=r"LSTM hx must be a tuple \(h_0, c_0\).*got Tensor"):
        _model("LSTM")(torch.randn(4, 2, 3), torch.zeros(2, 2, 5))
    with pytest.raises(TypeError, match=r"LSTM hx must be a tuple.*of length 1"):
        _model("LSTM")(torch.randn(4, 2, 3), (torch.zeros(2, 2, 5),))


def test_gru_hx_must_be_a_tensor():
    with pytest.raises(TypeError, match=r"GRU hx must be a tensor h_0, got tuple"):
        _model("GRU")(torch.randn(4, 2, 3), (torch.zeros(2, 2, 5),))


# ------------------------------------------------------------ dtype, device


@pytest.mark.parametrize("kind", KINDS)
def test_input_dtype_must_match_weights(kind):
    with pytest.raises(TypeError, match=r"input has dtype torch.float64 but the module's "
                                        r"parameters are torch.float32"):
        _model(kind)(torch.randn(4, 2, 3, dtype=F64))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dtype_must_match_weights(kind):
    x, h = torch.randn(4, 2, 3), torch.zeros(2, 2, 5)
    with pytest.raises(TypeError, match=r"h_0 has dtype torch.float64 .* torch.float32"):
        _model(kind)(x, _hx(kind, h.double(), h))
    if kind == "LSTM":
        with pytest.raises(TypeError, match=r"c_0 has dtype torch.float64 .* torch.float32"):
            _model(kind)(x, (h, h.double()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input(kind, dtype):
    with pytest.raises(TypeError, match=rf"input must be a floating-point tensor.*{dtype}"):
        _model(kind)(torch.ones(4, 2, 3, dtype=dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_input_and_state_device_must_match_weights(kind):
    """Checked on the meta device, so it runs without a GPU."""
    with pytest.raises(ValueError, match=r"input is on meta but the module's parameters are on "
                                         r"cpu"):
        _model(kind)(torch.empty(4, 2, 3, device="meta"))
    with pytest.raises(ValueError, match=r"h_0 is on meta but the module's parameters are on cpu"):
        _model(kind)(torch.randn(4, 2, 3), _hx(kind, torch.empty(2, 2, 5, device="meta"),
                                               torch.zeros(2, 2, 5)))


# ------------------------------------------------------------ PackedSequence


@pytest.mark.parametrize("kind", KINDS)
def test_packed_batch_sizes_increasing(kind):
    bad = PackedSequence(torch.randn(5, 3), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"batch_sizes must be positive and non-increasing, "
                                         r"got \[2, 3\]"):
        _model(kind)(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_batch_sizes_sum_differs_from_data_rows(kind):
    bad = PackedSequence(torch.randn(6, 3), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=r"batch_sizes sum to 5 but data has 6 rows"):
        _model(kind)(bad)


def test_packed_wrong_feature_size_and_dtype():
    packed = pack_padded_sequence(torch.randn(4, 2, 4), torch.tensor([4, 2]))
    with pytest.raises(ValueError, match=r"input_size=3"):
        _model("LSTM")(packed)
    packed = pack_padded_sequence(torch.randn(4, 2, 3, dtype=F64), torch.tensor([4, 2]))
    with pytest.raises(TypeError, match=r"float64 but .*float32"):
        _model("GRU")(packed)


# ------------------------------------------------------------ constructor


CTOR_ERRORS = [
    ("LSTM", dict(proj_size=5), ValueError, r"proj_size has to be smaller than hidden_size"),
    ("LSTM", dict(proj_size=7), ValueError, r"proj_size has to be smaller than hidden_size"),
    ("LSTM", dict(proj_size=-1), ValueError, r"proj_size should be a positive integer or zero"),
    ("LSTM", dict(proj_size=2.0), TypeError, r"proj_size should be of type int, got: float"),
    ("LSTM", dict(num_layers=0), ValueError, r"num_layers must be greater than zero"),
    ("GRU", dict(num_layers=-1), ValueError, r"num_layers must be greater than zero"),
    ("LSTM", dict(num_layers=1.5), TypeError, r"num_layers should be of type int, got: float"),
    ("GRU", dict(num_layers="2"), TypeError, r"num_layers should be of type int, got: str"),
    ("LSTM", dict(dropout=-0.1), ValueError, r"dropout should be a number in range \[0, 1\]"),
    ("GRU", dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
    ("LSTM", dict(hidden_size=0), ValueError, r"hidden_size must be greater than zero"),
    ("GRU", dict(hidden_size=-3), ValueError, r"hidden_size must be greater than zero"),
    ("LSTM", dict(input_size=0), ValueError, r"input_size must be greater than zero"),
    ("GRU", dict(input_size=-1), ValueError, r"input_size must be greater than zero"),
    ("LSTM", dict(hidden_size=5.0), TypeError, r"hidden_size should be of type int, got: float"),
]


@pytest.mark.parametrize("kind,kwargs,exc,match", CTOR_ERRORS,
                         ids=[f"{k}-{next(iter(kw))}={next(iter(kw.values()))!r}"
                              for k, kw, _, _ in CTOR_ERRORS])
def test_bad_constructor_arguments(kind, kwargs, exc, match):
    args = {"input_size": 3, "hidden_size": 5, **kwargs}
    with pytest.raises(exc, match=match):
        getattr(fusedrnn, kind)(**args)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("arg", ["input_size", "hidden_size"])
def test_cell_negative_size_names_the_argument(kind, arg):
    args = {"input_size": 3, "hidden_size": 5, arg: -2}
    with pytest.raises((ValueError, RuntimeError), match=arg):
        getattr(fusedrnn, kind)(**args)


# ------------------------------------------------------------------ cells


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_bad_input(kind):
    cell = getattr(fusedrnn, kind)(3, 5)
    with pytest.raises(ValueError, match=r"input must be 1-D \(H_in\) or 2-D \(N, H_in\), got a "
                                         r"3-D tensor of shape \(4, 2, 3\)"):
        cell(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"input_size=3, got input of shape \(2, 4\)"):
        cell(torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor.*int32"):
        cell(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"input has dtype torch.float64"):
        cell(torch.randn(2, 3, dtype=F64))
    h = torch.zeros(3, 5)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 5\), got \(3, 5\)"):
        cell(torch.randn(2, 3), (h, torch.zeros(2, 5)) if kind == "LSTMCell" else h)
    h = torch.zeros(1, 5)
    with pytest.raises(ValueError, match=r"h_0 must be 1-D .*\(5,\).*2-D tensor of shape \(1, 5\)"):
        cell(torch.randn(3), (h, h) if kind == "LSTMCell" else h)
    if kind == "LSTMCell":
        with pytest.raises(TypeError, match=r"LSTM hx must be a tuple"):
            cell(torch.randn(2, 3), torch.zeros(2, 5))
    else:
        with pytest.raises(TypeError, match=r"GRU hx must be a tensor"):
            cell(torch.randn(2, 3), (torch.zeros(2, 5),))


# ------------------------------------------------------- layer ops: lengths


def _layer_call(kind, lengths):
    T, B, I, H = 4, 2, 3, 5
    x, h0 = torch.randn(T, B, I), torch.zeros(B, H)
    if kind == "lstm":
        return ops.lstm_layer(x, torch.randn(4 * H, I), None, torch.randn(4 * H, H), None, h0, h0,
                              lengths)
    return ops.gru_layer(x, torch.randn(3 * H, I), None, torch.randn(3 * H, H), None, h0, lengths)


LENGTH_ERRORS = [
    ("too_long", torch.tensor([5, 2]), ValueError, r"lengths must lie in \[0, 4\].*2 to 5"),
    ("negative", torch.tensor([-1, 2]), ValueError, r"lengths must lie in \[0, 4\].*-1 to 2"),
    ("float", torch.tensor([1.0, 2.0]), TypeError, r"lengths must be an integer tensor.*float32"),
    ("bool", torch.tensor([True, False]), TypeError, r"lengths must be an integer tensor.*bool"),
    ("too_many", torch.tensor([1, 2, 3]), ValueError,
     r"lengths must have shape \(2,\), got \(3,\)"),
    ("2d", torch.tensor([[1, 2]]), ValueError, r"lengths must have shape \(2,\), got \(1, 2\)"),
    ("0d", torch.tensor(2), ValueError, r"lengths must have shape \(2,\), got \(\)"),
]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths,exc,match", [e[1:] for e in LENGTH_ERRORS],
                         ids=[e[0] for e in LENGTH_ERRORS])
def test_layer_bad_lengths(kind, lengths, exc, match):
    with pytest.raises(exc, match=match):
        _layer_call(kind, lengths)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_int32_lengths_equal_int64(kind):
    torch.manual_seed(3)
    a = _layer_call(kind, torch.tensor([4, 2], dtype=torch.int32))
    torch.manual_seed(3)
    b = _layer_call(kind, torch.tensor([4, 2]))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# -------------------------------------------------------------- empty batch


@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_like_torch(kind, with_hx, batch_first):
    ref, fused = make_pair(kind, 3, 5, num_layers=2, bidirectional=True,
                           batch_first=batch_first, dtype=F64)
    x = torch.randn((0, 4, 3) if batch_first else (4, 0, 3), dtype=F64)
    hx = _hx(kind, torch.randn(4, 0, 5, dtype=F64), torch.randn(4, 0, 5, dtype=F64)) \
        if with_hx else None
    expected = run(ref, x, hx)
    actual = run(fused, x, hx)  # backward included
    assert actual["out0"].shape == ((0, 4, 10) if batch_first else (4, 0, 10))
    assert_results_close(actual, expected, TOL[F64], "empty batch")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_empty_batch_like_torch(kind):
    ref, fused = make_pair(kind, 3, 5, dtype=F64)
    x = torch.randn(0, 3, dtype=F64)
    assert_results_close(run(fused, x), run(ref, x), TOL[F64], "empty batch")


# ------------------------------------------------------ NaN stays contained


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_nan_stays_in_its_sequence(kind, packed):
    _, fused = make_pair(kind, 3, 5, num_layers=2, bidirectional=True, dtype=F64)
    T, B, bad = 5, 4, 1
    keep = [b for b in range(B) if b != bad]
    x = torch.randn(T, B, 3, dtype=F64)
    x[2, bad, 1] = float("nan")
    h0 = torch.randn(4, B, 5, dtype=F64)
    hx = _hx(kind, h0, torch.randn(4, B, 5, dtype=F64))
    lengths = torch.tensor([3, 5, 2, 4])

    def forward(x, hx, rows):
        x = x[:, rows]
        hx = tuple(s[:, rows] for s in hx) if kind == "LSTM" else hx[:, rows]
        if packed:
            out, final = fused(pack_padded_sequence(x, lengths[rows], enforce_sorted=False), hx)
            out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
        else:
            out, final = fused(x, hx)
        finals = final if kind == "LSTM" else (final,)
        return out, finals

    x_all = x.clone().requires_grad_()
    out, finals = forward(x_all, hx, list(range(B)))
    out.nan_to_num(0.0).sum().backward()  # NaN rows give NaN gradients; the others must not
    assert out[:, bad].isnan().any()
    x_keep = x.clone().requires_grad_()  # the NaN row is left out by forward()
    out_keep, finals_keep = forward(x_keep, hx, keep)
    out_keep.sum().backward()

    tol = TOL[F64]
    torch.testing.assert_close(out[:, keep], out_keep, atol=tol, rtol=0)
    for f, f_keep in zip(finals, finals_keep):
        assert f[:, bad].isnan().any()
        torch.testing.assert_close(f[:, keep], f_keep, atol=tol, rtol=0)
    torch.testing.assert_close(x_all.grad[:, keep], x_keep.grad[:, keep], atol=tol, rtol=0)


# ------------------------------------------------- non-contiguous / strided


def _strided_inputs(form):
    """``(x, wrap)`` where ``wrap(x)`` is a non-contiguous (T, B, I) view of the leaf ``x``."""
    T, B, I = 5, 3, 4
    if form == "transposed":
        return torch.randn(B, T, I, dtype=F64), lambda x: x.transpose(0, 1)
    if form == "batch_step":
        return torch.randn(T, 2 * B, I, dtype=F64), lambda x: x[:, ::2]
    if form == "feature_step":
        return torch.randn(T, B, 2 * I, dtype=F64), lambda x: x[..., ::2]
    raise AssertionError(form)


@pytest.mark.parametrize("form", ["transposed", "batch_step", "feature_step"])
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_input_and_states(kind, form):
    ref, fused = make_pair(kind, 4, 5, num_layers=2, bidirectional=True, dtype=F64)
    x, view = _strided_inputs(form)
    # states as transposed views of (B, L*D, H) tensors
    h0 = torch.randn(3, 4, 5, dtype=F64).transpose(0, 1)
    c0 = torch.randn(3, 4, 5, dtype=F64).transpose(0, 1)
    hx = _hx(kind, h0, c0)
    assert not view(x).is_contiguous() and not h0.is_contiguous()
    strided = run(fused, x, hx, wrap=view)
    contiguous_hx = tuple(s.contiguous() for s in hx) if kind == "LSTM" else hx.contiguous()
    contiguous = run(fused, x, contiguous_hx, wrap=lambda x: view(x).contiguous())
    assert_results_close(strided, contiguous, TOL[F64], "strided vs contiguous")
    assert_results_close(strided, run(ref, x, hx, wrap=view), TOL[F64], "strided vs torch.nn")


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_batch_first_and_packed(kind):
    ref, fused = make_pair(kind, 4, 5, batch_first=True, dtype=F64)
    x = torch.randn(5, 3, 4, dtype=F64)  # time-major storage, used through a batch-first view
    assert_results_close(run(fused, x, wrap=lambda x: x.transpose(0, 1)),
                         run(ref, x, wrap=lambda x: x.transpose(0, 1)), TOL[F64], "batch_first")
    lengths = torch.tensor([2, 5, 3])

    def pack(x):
        return pack_padded_sequence(x[:, ::2], lengths, batch_first=True, enforce_sorted=False)
    x = torch.randn(3, 10, 4, dtype=F64)
    assert_results_close(run(fused, x, wrap=pack), run(ref, x, wrap=pack), TOL[F64], "packed")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_non_contiguous(kind):
    ref, fused = make_pair(kind, 4, 5, dtype=F64)
    x = torch.randn(4, 6, dtype=F64)
    h0 = torch.randn(5, 3, dtype=F64).t()
    hx = (h0, torch.randn(5, 3, dtype=F64).t()) if kind == "LSTMCell" else h0

    def view(x):
        return x.t()[::2]
    assert not view(x).is_contiguous()
    assert_results_close(run(fused, x, hx, wrap=view), run(ref, x, hx, wrap=view), TOL[F64], kind)
