"""The sequence-modelling toolkit (fusedrnn/features.py): each feature in the fused kernels
against the reference, on every device of tests/devices.py.

The parity pattern: the same module, the same seed, run once on the device's kernels and once
on the reference backend (``fusedrnn.reference``, plain PyTorch): the masks are drawn in Python
with torch's generator before the ops run, so both runs draw the same ones. Outputs, final
states and every gradient are compared at the project's tolerances (fp64 1e-10, fp32 5e-5).
Semantics the reference itself must have are checked against independent oracles built from
torch.nn's own cells (grad_clip, zoneout in eval) and by direct properties (forget_bias,
weight_drop, cell_clip).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from fusedrnn import ops
from conftest import (TOL, assert_results_close, assert_results_equal,
                      assert_within_twice_reference_error, kind_class, run)

T, B, I, H = 6, 3, 5, 7

# Small limits, so that the clamps are active on many elements (checked below).
LSTM_FEATURES = {
    "cell_clip": dict(cell_clip=0.15),
    "grad_clip": dict(grad_clip=0.02),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout=(0.3, 0.5)),
    "weight_drop": dict(weight_drop=0.5),
    "layer_norm": dict(layer_norm=True),
    "all": dict(cell_clip=0.15, grad_clip=0.02, recurrent_dropout=0.4, zoneout=(0.3, 0.5),
                weight_drop=0.5, forget_bias=1.0, layer_norm=True),
}
GRU_FEATURES = {
    "grad_clip": dict(grad_clip=0.02),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout=0.3),
    "weight_drop": dict(weight_drop=0.5),
    "layer_norm": dict(layer_norm=True),
    "all": dict(grad_clip=0.02, recurrent_dropout=0.4, zoneout=0.3, weight_drop=0.5,
                layer_norm=True),
}
# The Elman RNN takes the GRU's features (RNN_RELU: its relu form).
CASES = ([("LSTM", name) for name in LSTM_FEATURES] + [("GRU", name) for name in GRU_FEATURES]
         + [("RNN", name) for name in GRU_FEATURES] + [("RNN_RELU", "zoneout"),
                                                       ("RNN_RELU", "all")])
# Shapes each case runs in: 2-layer bidirectional with initial states; packed (unsorted
# lengths, batch_first); and a projected LSTM (proj_size; zoneout and layer_norm are
# refused there).
FORMS = ["bidirectional", "packed", "proj"]


def _features(kind: str, name: str) -> dict:
    return (LSTM_FEATURES if kind == "LSTM" else GRU_FEATURES)[name]  # GRU's: RNN's too


def _build(kind: str, features: dict, form: str, dtype, seed: int = 0):
    torch.manual_seed(seed)
    kwargs = dict(num_layers=2, bidirectional=True) if form == "bidirectional" else {}
    if form == "packed":
        kwargs = dict(batch_first=True)
    if form == "proj":
        kwargs = dict(proj_size=4)
    cls, extra = kind_class(kind)
    return _perturb_layer_norms(getattr(fusedrnn, cls)(I, H, **kwargs, **extra,
                                                       **features)).to(dtype)


def _perturb_layer_norms(module):
    """layer_norm's gains and biases away from their initial 1 and 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layer_norm"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return module


def _inputs(module, form: str, dtype):
    """(x, hx, wrap) for conftest.run."""
    gen = torch.Generator().manual_seed(7)
    D = 2 if module.bidirectional else 1
    x = torch.randn(B, T, I, generator=gen, dtype=dtype) if module.batch_first else \
        torch.randn(T, B, I, generator=gen, dtype=dtype)
    h_size = module.proj_size or module.hidden_size
    h0 = torch.randn(module.num_layers * D, B, h_size, generator=gen, dtype=dtype)
    c0 = torch.randn(module.num_layers * D, B, module.hidden_size, generator=gen, dtype=dtype)
    hx = (h0, c0) if module.mode == "LSTM" else h0
    wrap = None
    if form == "packed":
        lengths = torch.tensor([4, T, 2])
        wrap = lambda leaf: pack_padded_sequence(leaf, lengths, batch_first=True,  # noqa: E731
                                                 enforce_sorted=False)
    return x, hx, wrap


def _on(target, module, x, hx):
    return target.to(module), target.to(x), target.to(hx)


def run_seeded(module, x, hx, wrap=None, seed=3) -> dict:
    """conftest.run with the global generator seeded: the masks are drawn from it."""
    torch.manual_seed(seed)
    if x.is_cuda:
        torch.cuda.manual_seed(seed)
    return run(module, x, hx, wrap=wrap)


def _case_params():
    params = []
    for kind, name in CASES:
        for form in FORMS:
            features = _features(kind, name)
            if form == "proj" and (kind != "LSTM" or "zoneout" in features
                                   or "layer_norm" in features):
                continue
            params.append(pytest.param(kind, name, form, id=f"{kind}-{name}-{form}"))
    return params


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("kind,name,form", _case_params())
def test_feature_matches_reference(kind, name, form, dtype, training, device):
    module = _build(kind, _features(kind, name), form, dtype).train(training)
    x, hx, wrap = _inputs(module, form, dtype)
    module, x, hx = _on(device, module, x, hx)
    actual = run_seeded(module, x, hx, wrap)
    with ops.using_backend("reference"):
        expected = run_seeded(copy.deepcopy(module), x, hx, wrap)
        if dtype == torch.float32 and "layer_norm" in _features(kind, name):
            # A norm divides by its row's sigma, which amplifies fp32 rounding where sigma
            # is small (here: clamped cells): fp32 is held to twice the reference's own
            # error against fp64 (docs/design.md, Tolerances).
            exact = run_seeded(copy.deepcopy(module).double(), x.double(), _double(hx), wrap)
            assert_within_twice_reference_error(actual, expected, exact, f"{kind} {name} {form}")
            return
    assert_results_close(actual, expected, TOL[dtype], f"{kind} {name} {form}")


def _double(hx):
    return tuple(h.double() for h in hx) if isinstance(hx, tuple) else hx.double()


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_same_seed_same_results(kind, name, device):
    """Training twice under one seed gives bit-identical results; another seed draws other
    masks (for the random features)."""
    module = device.to(_build(kind, _features(kind, name), "bidirectional", torch.float32))
    x, hx, _ = _inputs(module, "bidirectional", torch.float32)
    x, hx = device.to(x), device.to(hx)
    first, second = run_seeded(module, x, hx, seed=5), run_seeded(module, x, hx, seed=5)
    assert_results_equal(first, second, f"{kind} {name}")
    if name not in ("cell_clip", "grad_clip", "layer_norm"):
        other = run_seeded(module, x, hx, seed=6)
        assert not torch.equal(other["out0"], first["out0"])


# ------------------------------------------------------------ eval identities


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_features_off_is_torch_nn(kind, device):
    """Every keyword at its off value: same state_dict keys and results as torch.nn."""
    off = dict(weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0, grad_clip=None)
    if kind == "LSTM":
        off.update(cell_clip=None, forget_bias=None)
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(I, H, num_layers=2, bidirectional=True).double()
    fused = getattr(fusedrnn, kind)(I, H, num_layers=2, bidirectional=True, **off).double()
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict())
    x, hx, _ = _inputs(fused, "bidirectional", torch.float64)
    expected = run(ref, x, hx)
    actual = run(device.to(fused), device.to(x), device.to(hx))
    assert_results_close(actual, expected, TOL[torch.float64])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_dropouts_in_eval_are_the_identity(kind, device):
    """recurrent_dropout and weight_drop do nothing in eval: bit-identical to the plain
    module (same kernels, no mask)."""
    plain = device.to(_build(kind, {}, "bidirectional", torch.float64)).eval()
    dropped = device.to(_build(kind, dict(recurrent_dropout=0.5, weight_drop=0.5),
                               "bidirectional", torch.float64)).eval()
    x, hx, _ = _inputs(plain, "bidirectional", torch.float64)
    x, hx = device.to(x), device.to(hx)
    assert_results_equal(run_seeded(dropped, x, hx), run_seeded(plain, x, hx))
    dropped.train()
    assert not torch.equal(run_seeded(dropped, x, hx)["out0"], run_seeded(plain, x, hx)["out0"])


def _torch_cell(kind: str, module):
    """torch.nn's cell with the weights of a 1-layer ``module``."""
    cell = getattr(torch.nn, kind + "Cell")(I, H).to(next(module.parameters()).dtype)
    cell.load_state_dict({k[:-3]: v for k, v in module.state_dict().items()})
    return cell


def _cell_loop(kind, cell, x, hx, mix=None, grad_clip=None):
    """torch.nn's ``cell`` over ``x`` (T, B, I) from the module-shaped ``hx``; ``mix(k, prev,
    new)`` makes each new state k (0: h, 1: c; zoneout), ``grad_clip`` clamps the gradient of the state
    each step takes (a hook on an alias, so the output's gradient is added after it).
    Returns ``[output, h_n, c_n]`` shaped as the module's."""
    state = tuple(h[0] for h in hx)  # the one layer's states
    outs = []
    for t in range(x.shape[0]):
        taken = tuple(s.view_as(s) for s in state)
        if grad_clip is not None:
            for s in taken:
                s.register_hook(lambda g: g.clamp(-grad_clip, grad_clip))
        new = cell(x[t], taken) if kind == "LSTM" else (cell(x[t], taken[0]),)
        state = tuple(mix(k, p, n) for k, (p, n) in enumerate(zip(taken, new))) if mix else new
        outs.append(state[0])
    return [torch.stack(outs)] + [s.unsqueeze(0) for s in state]


def _outputs_and_grads(results: list, leaves: list) -> list:
    """The results and the gradients of a fixed random weighting of them w.r.t. ``leaves``."""
    gen = torch.Generator().manual_seed(11)
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype).to(r.device)).sum()
               for r in results)
    return [r.detach() for r in results] + list(torch.autograd.grad(loss, leaves))


def _module_vs_cell_loop(kind, module, device, **loop):
    """The module on ``device`` against :func:`_cell_loop` on the CPU, same weights:
    outputs, final states and the gradients of the input, the initial states and the
    weights."""
    cell = _torch_cell(kind, module)
    x, hx, _ = _inputs(module, "single", torch.float64)
    hx = hx if isinstance(hx, tuple) else (hx,)
    leaves = [x.requires_grad_()] + [h.requires_grad_() for h in hx]
    expected = _outputs_and_grads(_cell_loop(kind, cell, x, hx, **loop),
                                  leaves + list(cell.parameters()))
    module = device.to(module)
    dev_leaves = [device.to(t).detach().requires_grad_() for t in leaves]
    dev_hx = tuple(dev_leaves[1:]) if kind == "LSTM" else dev_leaves[1]
    out, finals = module(dev_leaves[0], dev_hx)
    finals = list(finals) if kind == "LSTM" else [finals]
    actual = _outputs_and_grads([out] + finals, dev_leaves + list(module.parameters()))
    for a, e in zip(actual, expected, strict=True):
        assert (a.cpu() - e).abs().max().item() <= TOL[torch.float64]


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_zoneout_in_eval_is_the_expectation(kind, device):
    """Eval zoneout against torch.nn's own cell: h_t = z h_{t-1} + (1 - z) cell(x_t, h_{t-1}),
    and c_t likewise with z_c."""
    z = {"LSTM": (0.3, 0.6), "GRU": (0.3,), "RNN": (0.3,)}[kind]
    module = _build(kind, dict(zoneout=z), "single", torch.float64).eval()
    _module_vs_cell_loop(kind, module, device, mix=lambda k, prev, new: z[k] * prev + (1 - z[k]) * new)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_grad_clip_against_hooks_on_torch_cells(kind, device):
    """grad_clip against torch.nn's own cell with a hook clamping the gradient each step
    sends back into the state it took (before the output's gradient is added)."""
    module = _build(kind, dict(grad_clip=0.02), "single", torch.float64)
    _module_vs_cell_loop(kind, module, device, grad_clip=0.02)


# ------------------------------------------------------- direct properties


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_limits_are_active_in_these_tests(kind):
    """The limits used above clamp something: the parity tests exercise the clamps."""
    x, hx, _ = _inputs(_build(kind, {}, "bidirectional", torch.float64), "bidirectional",
                       torch.float64)
    plain = run(_build(kind, {}, "bidirectional", torch.float64), x, hx)
    clipped = run(_build(kind, dict(grad_clip=0.02), "bidirectional", torch.float64), x, hx)
    assert not torch.equal(plain["grad_input"], clipped["grad_input"])
    if kind == "LSTM":
        module = _build(kind, dict(cell_clip=0.15), "bidirectional", torch.float64)
        out, (_, c_n) = module(x, hx)
        assert c_n.abs().max() <= 0.15
        assert not torch.equal(out, run(_build(kind, {}, "bidirectional", torch.float64), x,
                                        hx)["out0"])


@pytest.mark.parametrize("cls", ["LSTM", "LSTMCell"])
def test_forget_bias_initialisation(cls):
    """The forget slice of every bias_ih is b and of every bias_hh 0, at construction and
    after reset_parameters; the other slices keep torch.nn's initialisation."""
    kwargs = dict(num_layers=2, bidirectional=True) if cls == "LSTM" else {}
    module = getattr(fusedrnn, cls)(I, H, forget_bias=1.5, **kwargs)
    torch.manual_seed(0)
    plain = getattr(torch.nn, cls)(I, H, **kwargs)
    assert list(module.state_dict()) == list(plain.state_dict())

    def check():
        biases = [(n, p) for n, p in module.named_parameters() if n.startswith("bias")]
        assert biases
        for name, p in biases:
            forget = p[H:2 * H]
            expected = 1.5 if name.startswith("bias_ih") else 0.0
            assert torch.equal(forget, torch.full_like(forget, expected)), name
            assert p[:H].abs().max() <= 1 / H ** 0.5 and p[:H].abs().max() > 0

    check()
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(9.0)
    module.reset_parameters()
    check()


def test_forget_bias_needs_biases():
    with pytest.raises(ValueError, match="forget_bias"):
        fusedrnn.LSTM(I, H, bias=False, forget_bias=1.0)
    with pytest.raises(TypeError, match="forget_bias"):
        fusedrnn.GRU(I, H, forget_bias=1.0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_weight_drop_keeps_the_parameter_and_masks_its_gradient(kind):
    """DropConnect: the parameter is unchanged, its gradient is exactly zero where the mask
    dropped a weight (about p of them) and nonzero elsewhere."""
    module = _build(kind, dict(weight_drop=0.5), "single", torch.float64)
    before = module.weight_hh_l0.detach().clone()
    x, hx, _ = _inputs(module, "single", torch.float64)
    out, _ = module(x, hx)
    out.square().sum().backward()
    assert torch.equal(module.weight_hh_l0.detach(), before)
    zero = (module.weight_hh_l0.grad == 0).double().mean().item()
    assert 0.35 < zero < 0.65
    assert module.weight_ih_l0.grad.ne(0).all()


def test_invalid_settings_raise():
    for kwargs in (dict(recurrent_dropout=1.0), dict(weight_drop=-0.1), dict(zoneout=1.5),
                   dict(cell_clip=0.0), dict(grad_clip=-1.0), dict(zoneout=(0.1, 0.2, 0.3))):
        with pytest.raises(ValueError):
            fusedrnn.LSTM(I, H, **kwargs)
    with pytest.raises(ValueError, match="cell state"):
        fusedrnn.GRU(I, H, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="cell state"):
        fusedrnn.RNN(I, H, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LSTM(I, H, proj_size=3, zoneout=0.1)
    with pytest.raises(ValueError, match="proj_size"):
        fusedrnn.LSTM(I, H, proj_size=3, layer_norm=True)
    with pytest.raises(TypeError, match="layer_norm"):
        fusedrnn.GRU(I, H, layer_norm=1)
    for lstm_only in (dict(cell_clip=1.0), dict(forget_bias=1.0)):
        with pytest.raises(TypeError, match=next(iter(lstm_only))):
            fusedrnn.RNN(I, H, **lstm_only)


def test_torch_compile_fullgraph_with_features():
    """torch.compile(fullgraph=True) traces a 2-layer bidirectional LSTM with every feature on;
    in training (aot_eager runs the mask draws eagerly, so one seed draws the same masks) and in
    eval it matches eager."""
    torch._dynamo.reset()
    module = _build("LSTM", LSTM_FEATURES["all"], "bidirectional", torch.float32)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x, hx, _ = _inputs(module, "bidirectional", torch.float32)
    for training in (True, False):
        module.train(training)
        traced = {k.replace("_orig_mod.", ""): v for k, v in run_seeded(compiled, x, hx).items()}
        assert_results_close(traced, run_seeded(module, x, hx), 1e-6, f"training={training}")


CELL_CASES = [("LSTMCell", dict(cell_clip=0.15)), ("LSTMCell", dict(zoneout=(0.3, 0.5))),
              ("LSTMCell", dict(cell_clip=0.15, zoneout=0.4, forget_bias=1.0)),
              ("LSTMCell", dict(layer_norm=True, zoneout=0.4)),
              ("GRUCell", dict(zoneout=0.3)), ("GRUCell", dict(layer_norm=True, zoneout=0.3)),
              ("RNNCell", dict(zoneout=0.3)),
              ("RNNCell", dict(layer_norm=True, zoneout=0.3, nonlinearity="relu"))]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cls,features", CELL_CASES, ids=[f"{c}-{'-'.join(f)}"
                                                          for c, f in CELL_CASES])
def test_cell_feature_matches_reference(cls, features, dtype, training, device):
    """The cells take cell_clip, zoneout, forget_bias and layer_norm (LSTMCell; GRUCell and
    RNNCell zoneout and layer_norm); batched and unbatched."""
    torch.manual_seed(0)
    cell = getattr(fusedrnn, cls)(I, H, **features)
    cell = device.to(_perturb_layer_norms(cell).to(dtype).train(training))
    gen = torch.Generator().manual_seed(7)
    for shape in ((B,), ()):
        x = device.to(torch.randn(*shape, I, generator=gen, dtype=dtype))
        h = device.to(torch.randn(*shape, H, generator=gen, dtype=dtype))
        hx = (h, device.to(torch.randn(*shape, H, generator=gen, dtype=dtype))) \
            if cls == "LSTMCell" else h
        actual = run_seeded(cell, x, hx)
        with ops.using_backend("reference"):
            expected = run_seeded(copy.deepcopy(cell), x, hx)
        assert_results_close(actual, expected, TOL[dtype], f"{cls} {features} {shape}")


def test_cells_refuse_the_layer_features():
    with pytest.raises(TypeError, match="recurrent_dropout"):
        fusedrnn.LSTMCell(I, H, recurrent_dropout=0.1)
    with pytest.raises(TypeError, match="cell_clip"):
        fusedrnn.GRUCell(I, H, cell_clip=1.0)
    with pytest.raises(TypeError, match="nonsense"):
        fusedrnn.GRUCell(I, H, nonsense=1.0)
    with pytest.raises(TypeError, match="grad_clip"):
        fusedrnn.RNNCell(I, H, grad_clip=1.0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_persistent_paths_step_aside(kind, device_path):
    """With the persistent path asked for, a layer with toolkit features runs the step loop
    (the persistent loops and kernels take none of them): same results as the reference."""
    module = device_path.to(_build(kind, _features(kind, "all"), "bidirectional", torch.float64))
    x, hx, _ = _inputs(module, "bidirectional", torch.float64)
    x, hx = device_path.to(x), device_path.to(hx)
    actual = run_seeded(module, x, hx)
    with ops.using_backend("reference"):
        expected = run_seeded(copy.deepcopy(module), x, hx)
    assert_results_close(actual, expected, TOL[torch.float64])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_RELU"])
def test_double_backward_with_features(kind):
    """create_graph=True (a gradient penalty) with every feature but grad_clip on: the fused
    ops' differentiable backward (through the reference, with the same masks) against the
    reference backend end to end. With grad_clip the fused ops refuse it (registration.py)."""
    features = {k: v for k, v in _features(kind, "all").items() if k != "grad_clip"}
    module = _build(kind, features, "bidirectional", torch.float64)
    x, hx, _ = _inputs(module, "bidirectional", torch.float64)

    def penalty_grads():
        torch.manual_seed(3)
        xi = x.clone().requires_grad_()
        out, _ = module(xi, hx)
        (gx,) = torch.autograd.grad(out.tanh().sum(), xi, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(module.parameters()))

    actual = penalty_grads()
    with ops.using_backend("reference"):
        expected = penalty_grads()
    for a, e in zip(actual, expected, strict=True):
        assert (a - e).abs().max().item() <= TOL[torch.float64]

    clipped = _build(kind, dict(grad_clip=0.02), "bidirectional", torch.float64)
    xi = x.clone().requires_grad_()
    out, _ = clipped(xi, hx)
    with pytest.raises(RuntimeError, match="grad_clip"):
        (gx,) = torch.autograd.grad(out.tanh().sum(), xi, create_graph=True)
        torch.autograd.grad(gx.square().sum(), list(clipped.parameters()))
