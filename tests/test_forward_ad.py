"""Forward-mode AD and torch.func's transforms: the tangents and gradients of torch.nn (or of
the reference backend, for what torch.nn lacks), on every class, kernel path and device.

A call carrying only forward-mode tangents needs no backward; before the guard of
``registration.transforms_active`` such a call ran below autograd and its tangent was
dropped (torch.func.jvp gave zeros, forward_ad ``None``): every test here failed then.
Everything runs in fp64 (tolerance 1e-10), where torch.nn's CPU kernels support forward AD.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import ops
from conftest import TOL, make_pair

F64 = torch.float64
ATOL = TOL[F64]
T, B, I, H = 4, 2, 3, 4

CASES = [
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True),
                 id="LSTM-L2-bi-proj"),
    pytest.param("GRU", {}, id="GRU"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True, bias=False), id="GRU-L2-bi"),
    pytest.param("LSTMCell", {}, id="LSTMCell"),
    pytest.param("GRUCell", dict(bias=False), id="GRUCell-nobias"),
    pytest.param("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
                 id="RNN-L2-bi-relu"),
    pytest.param("RNNCell", {}, id="RNNCell"),
]
SMALL_CASES = [CASES[0], CASES[2], CASES[4], CASES[5], CASES[7]]  # one of each class but RNN


def _pair(kind, kwargs):
    ref, fused = make_pair(kind, I, H, dtype=F64, **kwargs)
    return ref, fused


def _input(module, kind):
    if kind.endswith("Cell"):
        return torch.randn(B, I, dtype=F64)
    return torch.randn(B, T, I, dtype=F64) if module.batch_first else torch.randn(T, B, I,
                                                                                    dtype=F64)


def _state(module, kind):
    """A non-zero initial state, so that its tangent matters."""
    if kind.endswith("Cell"):
        h = torch.randn(B, H, dtype=F64)
        return (h, torch.randn(B, H, dtype=F64)) if kind == "LSTMCell" else h
    D = 2 if module.bidirectional else 1
    h = torch.randn(module.num_layers * D, B, module.proj_size or H, dtype=F64)
    c = torch.randn(module.num_layers * D, B, H, dtype=F64)
    return (h, c) if kind == "LSTM" else h


def _flat(result) -> list:
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flat(r)]
    return [result]


def _rebuild(like, flat: list):
    """``flat`` (tensors in order) in the structure of ``like`` (a state)."""
    if isinstance(like, tuple):
        return tuple(flat[:len(like)])
    return flat[0]


def _tangents_like(tensors: list) -> list:
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tensors]


class _Calling(torch.nn.Module):
    """``forward(module, x, hx)`` as a module, so that functional_call can swap in dual
    parameters."""

    def __init__(self, module, forward):
        super().__init__()
        self.module, self.call = module, forward

    def forward(self, x, hx):
        return self.call(self.module, x, hx)


def forward_ad_results(module, x, hx, *, tangent_params: bool, no_grad: bool = False,
                       forward=None, tangent_input: bool = True):
    """(outputs, their tangents) of ``module(x, hx)`` (or ``forward(module, x, hx)``) under
    torch.autograd.forward_ad, with a tangent on the input (``tangent_input``), the state
    and (``tangent_params``) every parameter."""
    states = _flat(hx)
    params = dict(module.named_parameters())
    t_x, *t_states = _tangents_like([x] + states)
    t_params = _tangents_like(list(params.values()))
    calling = _Calling(module, forward or (lambda m, inp, state: m(inp, state)))
    with fwAD.dual_level(), torch.set_grad_enabled(not no_grad):
        dual_x = fwAD.make_dual(x, t_x) if tangent_input else x
        dual_hx = _rebuild(hx, [fwAD.make_dual(s, t) for s, t in zip(states, t_states)])
        if tangent_params:
            duals = {f"module.{n}": fwAD.make_dual(p.detach(), t)
                     for (n, p), t in zip(params.items(), t_params)}
            result = functional_call(calling, duals, (dual_x, dual_hx))
        else:
            result = calling(dual_x, dual_hx)
        unpacked = [fwAD.unpack_dual(r) for r in _flat(result)]
    return [u.primal for u in unpacked], [u.tangent for u in unpacked]


def assert_tangents_close(actual, expected, what):
    (a_out, a_tan), (e_out, e_tan) = actual, expected
    assert len(a_out) == len(e_out), what
    for k, (a, e) in enumerate(zip(a_out, e_out)):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=0, msg=f"{what}: output {k}")
    for k, (a, e) in enumerate(zip(a_tan, e_tan)):
        assert e is not None, f"{what}: the oracle has no tangent for output {k}"
        assert a is not None, f"{what}: tangent of output {k} is missing"
        assert e.abs().max() > 0, f"{what}: the oracle's tangent {k} is zero (a weak test)"
        torch.testing.assert_close(a, e, atol=ATOL, rtol=0, msg=f"{what}: tangent {k}")


# ---------------------------------------------------------------- forward_ad


@pytest.mark.parametrize("weights", ["frozen", "trainable", "tangent"])
@pytest.mark.parametrize("kind,kwargs", CASES)
def test_forward_ad_matches_torch_nn(kind, kwargs, weights, device_path):
    """Dual input and state; weights frozen (requires_grad=False: the call needs no
    backward, the case that dropped the tangent), trainable, or dual themselves."""
    ref, fused = _pair(kind, kwargs)
    if weights == "frozen":
        for module in (ref, fused):
            module.requires_grad_(False)
    x, hx = _input(fused, kind), _state(fused, kind)
    tangent_params = weights == "tangent"
    expected = forward_ad_results(ref, x, hx, tangent_params=tangent_params)
    actual = forward_ad_results(fused, x, hx, tangent_params=tangent_params)
    assert_tangents_close(actual, expected, f"{kind} {weights} on {device_path.name}")


@pytest.mark.parametrize("kind,kwargs", CASES)
def test_forward_ad_under_no_grad(kind, kwargs, device):
    """The inference path (no_grad: nothing saved for a backward) still carries tangents:
    no_grad turns off reverse mode only, as in torch.nn."""
    ref, fused = _pair(kind, kwargs)
    x, hx = _input(fused, kind), _state(fused, kind)
    expected = forward_ad_results(ref, x, hx, tangent_params=True, no_grad=True)
    actual = forward_ad_results(fused, x, hx, tangent_params=True, no_grad=True)
    assert_tangents_close(actual, expected, f"{kind} no_grad")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_forward_ad_packed_sequence(kind, device_path):
    """Tangents on the state and the weights (torch's pack_padded_sequence has no forward
    AD: the input takes none)."""
    ref, fused = _pair(kind, dict(num_layers=2, bidirectional=True))
    x, hx = _input(fused, kind), _state(fused, kind)
    lengths = torch.tensor([2, T])

    def packed_call(module, inp, state):
        out, final = module(pack_padded_sequence(inp, lengths, enforce_sorted=False), state)
        return pad_packed_sequence(out)[0], final

    expected, actual = (forward_ad_results(m, x, hx, tangent_params=True, forward=packed_call,
                                           tangent_input=False) for m in (ref, fused))
    assert_tangents_close(actual, expected, f"{kind} packed")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_forward_ad_of_step(kind, device):
    """``rnn.step`` against torch.nn on a one-step sequence."""
    ref, fused = _pair(kind, dict(num_layers=2))
    x, hx = torch.randn(B, I, dtype=F64), _state(fused, kind)

    def torch_step(module, x_t, state):
        out, final = module(x_t.unsqueeze(0), state)
        return out[0], final

    expected = forward_ad_results(ref, x, hx, tangent_params=False, forward=torch_step)
    actual = forward_ad_results(fused, x, hx, tangent_params=False,
                                forward=lambda m, x_t, state: m.step(x_t, state))
    assert_tangents_close(actual, expected, f"{kind}.step")


TOOLKIT = [
    pytest.param("LSTM", dict(cell_clip=0.3, zoneout=(0.3, 0.5), recurrent_dropout=0.4,
                              weight_drop=0.5, grad_clip=0.1), True, id="LSTM-toolkit-train"),
    pytest.param("LSTM", dict(cell_clip=0.3, zoneout=(0.3, 0.5)), False, id="LSTM-toolkit-eval"),
    pytest.param("GRU", dict(zoneout=0.3, recurrent_dropout=0.4, grad_clip=0.1), True,
                 id="GRU-toolkit-train"),
    pytest.param("LSTM", dict(layer_norm=True), True, id="LSTM-layer_norm"),
    pytest.param("GRU", dict(layer_norm=True, zoneout=0.3), True, id="GRU-layer_norm"),
    pytest.param("LSTMCell", dict(layer_norm=True, cell_clip=0.3), True,
                 id="LSTMCell-layer_norm"),
    pytest.param("GRUCell", dict(layer_norm=True), True, id="GRUCell-layer_norm"),
    pytest.param("RNN", dict(zoneout=0.3, recurrent_dropout=0.4, grad_clip=0.1), True,
                 id="RNN-toolkit-train"),
    pytest.param("RNN", dict(layer_norm=True, nonlinearity="relu"), True, id="RNN-layer_norm"),
    pytest.param("RNNCell", dict(layer_norm=True, zoneout=0.3), True, id="RNNCell-layer_norm"),
]


@pytest.mark.parametrize("kind,features,training", TOOLKIT)
def test_forward_ad_toolkit_matches_reference(kind, features, training, device):
    """The toolkit's ops and the layer-norm ops against the reference backend (plain torch
    ops, differentiated by torch itself), the masks drawn from the same seed."""
    torch.manual_seed(0)
    fused = getattr(fusedrnn, kind)(I, H, dtype=F64, **features).train(training)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if name.startswith("layer_norm"):
                p.uniform_(0.5, 1.5)
    x, hx = _input(fused, kind), _state(fused, kind)
    torch.manual_seed(3)
    actual = forward_ad_results(fused, x, hx, tangent_params=True)
    with ops.using_backend("reference"):
        torch.manual_seed(3)
        expected = forward_ad_results(copy.deepcopy(fused), x, hx, tangent_params=True)
    assert_tangents_close(actual, expected, f"{kind} {features}")


@pytest.mark.parametrize("kind,kwargs", SMALL_CASES)
def test_forward_ad_against_finite_differences(kind, kwargs):
    """Independent of both oracles: gradcheck's numerical jvp of every input."""
    _, fused = _pair(kind, kwargs)
    x, hx = _input(fused, kind), _state(fused, kind)
    states = _flat(hx)

    def f(x, *states):
        return tuple(_flat(fused(x, _rebuild(hx, list(states)))))

    inputs = [t.requires_grad_() for t in [x] + states]
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)


# ---------------------------------------------------------------- torch.func


def _scalar_loss(module, x, hx):
    """``params, x, hx -> scalar``: a fixed weighting of every output of ``module`` (the
    weights drawn here, outside the transforms: vmap refuses random draws)."""
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(o.shape, generator=gen, dtype=o.dtype)
               for o in _flat(module(x, hx))]

    def loss(params, x, hx):
        outs = _flat(functional_call(module, params, (x, hx)))
        return sum((o * w).sum() for o, w in zip(outs, weights))
    return loss


def _params(module):
    return {n: p.detach() for n, p in module.named_parameters()}


TRANSFORMS = ["grad", "vjp", "jacrev", "jvp", "jacfwd"]


def _apply_transform(name, loss, params, x, hx):
    if name == "grad":
        return torch.func.grad(loss, argnums=(0, 1))(params, x, hx)
    if name == "vjp":
        value, pullback = torch.func.vjp(lambda p, inp: loss(p, inp, hx), params, x)
        return value, pullback(torch.ones_like(value))
    if name == "jacrev":
        return torch.func.jacrev(loss, argnums=(0, 1, 2))(params, x, hx)
    tangents = dict(zip(params, _tangents_like(list(params.values()))))
    if name == "jvp":
        t_x = _tangents_like([x])[0]
        return torch.func.jvp(lambda p, inp: loss(p, inp, hx), (params, x), (tangents, t_x))
    return torch.func.jacfwd(loss, argnums=(1, 2))(params, x, hx)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("kind,kwargs", CASES)
def test_torch_func_transform_matches_torch_nn(kind, kwargs, transform, device_path):
    """grad, vjp, jacrev (every parameter, the input and the state), jvp and jacfwd."""
    ref, fused = _pair(kind, kwargs)
    x, hx = _input(fused, kind), _state(fused, kind)
    expected = _apply_transform(transform, _scalar_loss(ref, x, hx), _params(ref), x, hx)
    actual = _apply_transform(transform, _scalar_loss(fused, x, hx), _params(fused), x, hx)
    expected, actual = torch.utils._pytree.tree_leaves(expected), \
        torch.utils._pytree.tree_leaves(actual)
    assert len(actual) == len(expected)
    assert any(e.abs().max() > 0 for e in expected[1:])
    for k, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, atol=ATOL, rtol=0, msg=f"{transform}: leaf {k}")


@pytest.mark.parametrize("kind,kwargs", SMALL_CASES)
def test_hessian_matches_torch_nn(kind, kwargs, device):
    """hessian (jacfwd over jacrev) with respect to the input: forward mode over the
    backward, which then runs differentiably."""
    ref, fused = _pair(kind, kwargs)
    x, hx = _input(fused, kind), _state(fused, kind)
    losses = [(_scalar_loss(m, x, hx), _params(m)) for m in (ref, fused)]
    hessians = [torch.func.hessian(lambda inp, f=f, p=p: f(p, inp, hx))(x) for f, p in losses]
    assert hessians[0].abs().max() > 0
    torch.testing.assert_close(hessians[1], hessians[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell"])
def test_vmap_of_grad(kind):
    """Per-example gradients, the torch.func recipe: vmap over grad (vmap of the op itself
    runs torch's per-element fallback; torch.nn's LSTM, GRU and LSTMCell refuse vmap)."""
    _, fused = _pair(kind, {})
    xs = torch.randn(3, *_input(fused, kind).shape, dtype=F64)
    hx = _state(fused, kind)
    loss = _scalar_loss(fused, xs[0], hx)
    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(
        _params(fused), xs, hx)
    for k, xk in enumerate(xs):
        one = torch.func.grad(loss)(_params(fused), xk, hx)
        for name in one:
            torch.testing.assert_close(per_example[name][k], one[name], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_torch_func_grad_with_grad_clip_raises(kind):
    """torch.func's gradient transforms need a differentiable backward, which grad_clip
    refuses (registration.py): an error naming grad_clip, never a doubtful gradient."""
    fused = getattr(fusedrnn, kind)(I, H, dtype=F64, grad_clip=0.1)
    x = _input(fused, kind)
    with pytest.raises(RuntimeError, match="grad_clip .*torch.func"):
        torch.func.grad(lambda inp: fused(inp)[0].sum())(x)
