"""fusedrnn modules against torch.nn and against fusedrnn.reference, same weights.

Every comparison covers outputs, final states and the gradients of the input, the initial
states and every parameter (see conftest.run). The configuration sweep is pairwise: every
pair of values of any two options appears in at least one case (plus a few hand-picked
extremes), which keeps it fast without the full cartesian product.

The fused modules run on every device (tests/devices.py: cpu, simt, cuda; standard and
persistent kernels); torch.nn and the reference always run on the CPU (cuDNN's fp32 uses
TF32, so it is never the reference).
"""

from __future__ import annotations

import copy
import itertools
import random
from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from conftest import TOL, assert_results_close, make_pair, reference_forward, run

B = 4  # batch size of the batched and packed cases

FACTORS = {
    "kind": ["LSTM", "GRU", "RNN", "RNN_RELU"],
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "batch_first": [False, True],
    "bias": [True, False],
    "proj": [False, True],  # LSTM only
    "form": ["batched", "unbatched", "packed_sorted", "packed_unsorted"],
    "hx": [False, True],
    "hidden": [7, 13, 8],
    "input_size": [5, 13],
    "T": [5, 1],
    "dtype": [torch.float64, torch.float32],
}


def _normalize(case: dict) -> dict:
    return {**case, "proj": case["proj"] and case["kind"] == "LSTM"}


def _pairwise(factors: dict, seed: int = 0, tries: int = 30) -> list:
    """A small set of cases covering every feasible pair of option values (greedy, AETG-like)."""
    rng = random.Random(seed)
    names = list(factors)

    def pairs(case):
        idx = {n: factors[n].index(case[n]) for n in names}
        return {((a, idx[a]), (b, idx[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for i, j in itertools.product(range(len(factors[a])), range(len(factors[b]))):
            probe = _normalize({**{n: factors[n][0] for n in names},
                                a: factors[a][i], b: factors[b][j]})
            if probe[a] == factors[a][i] and probe[b] == factors[b][j]:
                uncovered.add(((a, i), (b, j)))
    cases = []
    while uncovered:
        (a, i), (b, j) = min(uncovered)
        candidates = []
        for _ in range(tries):
            case = {n: rng.choice(factors[n]) for n in names}
            candidates.append(_normalize({**case, a: factors[a][i], b: factors[b][j]}))
        best = max(candidates, key=lambda c: len(pairs(c) & uncovered))
        uncovered -= pairs(best)
        cases.append(best)
    return cases


_DEFAULTS = {"kind": "LSTM", "num_layers": 1, "bidirectional": False, "batch_first": False,
             "bias": True, "proj": False, "form": "batched", "hx": True, "hidden": 7,
             "input_size": 5, "T": 5, "dtype": torch.float64}
EXTRA = [  # everything at once, and the smallest sizes
    {**_DEFAULTS, "num_layers": 3, "bidirectional": True, "proj": True, "form": "packed_unsorted",
     "batch_first": True},
    {**_DEFAULTS, "kind": "GRU", "num_layers": 3, "bidirectional": True, "form": "packed_unsorted"},
    {**_DEFAULTS, "hidden": 1, "input_size": 1, "T": 1},
    {**_DEFAULTS, "kind": "GRU", "hidden": 1, "input_size": 1, "form": "unbatched"},
    {**_DEFAULTS, "hidden": 2, "proj": True, "num_layers": 2, "dtype": torch.float32},
    {**_DEFAULTS, "kind": "RNN_RELU", "num_layers": 3, "bidirectional": True,
     "form": "packed_unsorted"},
]
CASES = [SimpleNamespace(**c) for c in _pairwise(FACTORS) + EXTRA]


def _case_id(c) -> str:
    return "-".join([c.kind, f"L{c.num_layers}", "bi" if c.bidirectional else "uni",
                     "bf" if c.batch_first else "tf", "bias" if c.bias else "nobias",
                     *(["proj"] if c.proj else []), c.form, "hx" if c.hx else "nohx",
                     f"I{c.input_size}", f"H{c.hidden}", f"T{c.T}",
                     "f64" if c.dtype == torch.float64 else "f32"])


def build(c):
    """``(torch module, fused module, x, hx, wrap)`` for case ``c``."""
    kwargs = dict(num_layers=c.num_layers, bias=c.bias, batch_first=c.batch_first,
                  bidirectional=c.bidirectional, dtype=c.dtype)
    if c.proj:
        kwargs["proj_size"] = max(1, c.hidden // 2)
    ref, fused = make_pair(c.kind, c.input_size, c.hidden, **kwargs)
    D = 2 if c.bidirectional else 1
    T = c.T
    wrap = None
    if c.form == "unbatched":
        x = torch.randn(T, c.input_size, dtype=c.dtype)
        batch_shape = ()
    else:
        x = torch.randn(*((B, T) if c.batch_first else (T, B)), c.input_size, dtype=c.dtype)
        batch_shape = (B,)
    if c.form.startswith("packed"):
        enforce_sorted = c.form == "packed_sorted"
        lengths = [T, max(T - 1, 1), max(T - 3, 1), 1]
        if not enforce_sorted:
            lengths = [lengths[2], lengths[0], lengths[3], lengths[1]]
        lengths = torch.tensor(lengths)

        def wrap(x):
            return pack_padded_sequence(x, lengths, batch_first=c.batch_first,
                                        enforce_sorted=enforce_sorted)
    hx = None
    if c.hx:
        h0 = torch.randn(c.num_layers * D, *batch_shape, ref.proj_size or c.hidden, dtype=c.dtype)
        c0 = torch.randn(c.num_layers * D, *batch_shape, c.hidden, dtype=c.dtype)
        hx = (h0, c0) if c.kind == "LSTM" else h0
    return ref, fused, x, hx, wrap


@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_module_matches_torch(c, device_path):
    ref, fused, x, hx, wrap = build(c)
    expected = run(ref, x, hx, wrap=wrap)
    actual = run(device_path.to(fused), device_path.to(x), device_path.to(hx), wrap=wrap)
    assert_results_close(actual, expected, TOL[c.dtype], "fusedrnn vs torch.nn")


@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_module_matches_reference(c):
    _, fused, x, hx, wrap = build(c)
    expected = run(fused, x, hx, wrap=wrap, forward=lambda i, h: reference_forward(fused, i, h))
    actual = run(fused, x, hx, wrap=wrap)
    assert_results_close(actual, expected, TOL[c.dtype], "fusedrnn vs reference")


@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_reference_matches_torch(c):
    """The oracle itself is right."""
    ref, _, x, hx, wrap = build(c)
    expected = run(ref, x, hx, wrap=wrap)
    actual = run(ref, x, hx, wrap=wrap, forward=lambda i, h: reference_forward(ref, i, h))
    assert_results_close(actual, expected, TOL[c.dtype], "reference vs torch.nn")


def test_sweep_is_pairwise():
    """The generated sweep really covers every feasible pair of values (and each form/kind)."""
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if {a, b} == {"kind", "proj"} and True in (va, vb) and {va, vb} != {"LSTM", True}:
                continue  # a projection is the LSTM's only
            assert any(getattr(c, a) == va and getattr(c, b) == vb for c in CASES), (a, va, b, vb)


# ------------------------------------------------------------------- cells


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell", "RNNCell_RELU"])
def test_cell_matches_torch(kind, batched, with_hx, bias, dtype, device):
    I, H = 5, 13
    ref, fused = make_pair(kind, I, H, bias=bias, dtype=dtype)
    batch = (3,) if batched else ()
    x = torch.randn(*batch, I, dtype=dtype)
    hx = None
    if with_hx:
        h0 = torch.randn(*batch, H, dtype=dtype)
        hx = (h0, torch.randn(*batch, H, dtype=dtype)) if kind == "LSTMCell" else h0
    actual = run(device.to(fused), device.to(x), device.to(hx))
    assert_results_close(actual, run(ref, x, hx), TOL[dtype], kind)


# --------------------------------------------------------- reduced precision


def _low_precision_cases():
    cases = []
    for kind in ("LSTM", "GRU"):
        cases.append(pytest.param(kind, dict(num_layers=2, bidirectional=True), False,
                                  id=f"{kind}-L2-bi"))
        cases.append(pytest.param(kind, dict(num_layers=1), True, id=f"{kind}-L1-packed"))
    cases.append(pytest.param("RNN", dict(num_layers=2, bidirectional=True), True,
                              id="RNN-L2-bi-packed"))
    cases.append(pytest.param("RNN", dict(nonlinearity="relu"), False, id="RNN_RELU-L1"))
    cases.append(pytest.param("LSTM", dict(num_layers=2, proj_size=5), False, id="LSTM-L2-proj"))
    return cases


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind,kwargs,packed", _low_precision_cases())
def test_low_precision_error_within_twice_torch(kind, kwargs, packed, dtype, device_path):
    """docs/design.md, Tolerances: fp16/bf16 fused error <= 2x torch.nn's error in the same
    precision on the same device (cuDNN on a GPU), both against an fp64 run with the same
    (rounded) weights."""
    I, H, T = 13, 13, 6
    ref64, _ = make_pair(kind, I, H, **kwargs)
    # Round the weights to the low precision first: every run then uses the same weights.
    ref64.load_state_dict({k: v.to(dtype).double() for k, v in ref64.state_dict().items()})
    ref64.double()
    fused16 = getattr(fusedrnn, kind)(I, H, **kwargs).to(dtype)
    fused16.load_state_dict(ref64.state_dict())
    ref16 = copy.deepcopy(ref64).to(dtype)
    D = 2 if ref64.bidirectional else 1
    x = torch.randn(T, B, I).to(dtype)
    h0 = torch.randn(ref64.num_layers * D, B, ref64.proj_size or H).to(dtype)
    c0 = torch.randn(ref64.num_layers * D, B, H).to(dtype)
    hx = (h0, c0) if kind == "LSTM" else h0
    wrap = None
    if packed:
        def wrap(x):
            return pack_padded_sequence(x, torch.tensor([4, 6, 1, 3]), enforce_sorted=False)

    def to64(t):
        return t.double() if isinstance(t, torch.Tensor) else tuple(s.double() for s in t)

    on = device_path.to
    baseline = run(ref64, x.double(), to64(hx), wrap=wrap)
    torch_err = run(on(ref16), on(x), on(hx), wrap=wrap)
    fused_err = run(on(fused16), on(x), on(hx), wrap=wrap)
    assert fused_err.keys() == baseline.keys() == torch_err.keys()
    for key, base in baseline.items():
        if not base.is_floating_point():
            assert torch.equal(fused_err[key].cpu(), base), key
            continue
        assert fused_err[key].dtype == dtype, (key, fused_err[key].dtype)
        err_torch = (torch_err[key].cpu().double() - base).abs().max().item()
        err_fused = (fused_err[key].cpu().double() - base).abs().max().item()
        # half an ulp of the low precision at the tensor's scale, for when torch's error is ~0
        eps = torch.finfo(dtype).eps / 2 * base.abs().max().item()
        assert err_fused <= 2 * err_torch + eps, (
            f"{key}: fused {dtype} error {err_fused:.3e} > 2 x torch's {err_torch:.3e} + {eps:.1e}")


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_dropout_training_matches_torch_under_same_seed(kind):
    """Dropout between layers draws the same masks as torch.nn from the same seed."""
    ref, fused = make_pair(kind, 5, 7, num_layers=3, dropout=0.5, bidirectional=True,
                           dtype=torch.float64)
    x = torch.randn(6, B, 5, dtype=torch.float64)
    results = {}
    runs = (("torch", ref, None), ("fused", fused, None),
            ("reference", fused, lambda i, h: reference_forward(fused, i, h)))
    for name, module, forward in runs:
        torch.manual_seed(7)
        results[name] = run(module, x, forward=forward)
    assert_results_close(results["fused"], results["torch"], TOL[torch.float64], "vs torch.nn")
    assert_results_close(results["fused"], results["reference"], TOL[torch.float64], "vs reference")

    # ... and the masks are really there: another seed or eval mode give other outputs.
    torch.manual_seed(8)
    other_seed = fused(x)[0]
    fused.eval()
    eval_out = fused(x)[0]
    assert not torch.allclose(results["fused"]["out0"], other_seed)
    assert not torch.allclose(results["fused"]["out0"], eval_out)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_one_zeroes_deeper_layer_input(kind, bidirectional):
    """With p=1 layer 2 sees zeros: its output is a 1-layer model's run on a zero input."""
    I, H, T = 5, 7, 5
    D = 2 if bidirectional else 1
    _, fused = make_pair(kind, I, H, num_layers=2, dropout=1.0, bidirectional=bidirectional,
                         dtype=torch.float64)
    fused.train()
    layers = []
    for layer, in_size in ((0, I), (1, D * H)):
        single = getattr(torch.nn, kind)(in_size, H, bidirectional=bidirectional,
                                         dtype=torch.float64)
        state = fused.state_dict()
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in state.items()
                                if f"_l{layer}" in k})
        layers.append(single)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(2 * D, B, H, dtype=torch.float64)
    c0 = torch.randn(2 * D, B, H, dtype=torch.float64)
    hx = (h0, c0) if kind == "LSTM" else h0

    def layer_hx(layer):
        rows = slice(layer * D, (layer + 1) * D)
        return (h0[rows], c0[rows]) if kind == "LSTM" else h0[rows]

    _, first_final = layers[0](x, layer_hx(0))
    expected_out, second_final = layers[1](x.new_zeros(T, B, D * H), layer_hx(1))
    out, final = fused(x, hx)
    tol = TOL[torch.float64]
    torch.testing.assert_close(out, expected_out, atol=tol, rtol=0)
    finals = zip(final, first_final, second_final) if kind == "LSTM" else \
        [(final, first_final, second_final)]
    for got, a, b in finals:
        torch.testing.assert_close(got, torch.cat([a, b]), atol=tol, rtol=0)
    # Backward still works: the second layer's input weights get no gradient signal.
    out.sum().backward()
    assert torch.count_nonzero(fused.weight_ih_l1.grad) == 0
    assert torch.count_nonzero(fused.weight_hh_l1.grad) > 0


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_dropout_in_eval_mode_matches_torch_with_backward(kind):
    ref, fused = make_pair(kind, 5, 7, num_layers=3, dropout=0.5, dtype=torch.float64)
    ref.eval(), fused.eval()
    x = torch.randn(5, B, 5, dtype=torch.float64)
    assert_results_close(run(fused, x), run(ref, x), TOL[torch.float64], "eval mode")
