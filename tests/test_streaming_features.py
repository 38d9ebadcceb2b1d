"""Every toolkit feature through ``step`` and ``tbptt``.

* Deterministic settings (any feature in eval mode; cell_clip, grad_clip, forget_bias
  and layer_norm in training): stepping or chunked stateful calls give the one long
  call's outputs, states and gradients.
* Random masks in training (zoneout, recurrent_dropout, weight_drop): a call draws
  them for the steps it runs, so ``step`` draws new ones each step; tbptt is then
  exactly the hand-written chunk loop under the same seed, and stepping is
  reproducible under a seed and differs from eval (the feature acts).
"""

from __future__ import annotations

import pytest
import torch

import fusedrnn
from conftest import TOL, assert_results_close, run
from test_streaming import _chunked, _stepwise

LSTM_FEATURES = {
    "forget_bias": dict(forget_bias=1.0),
    "weight_drop": dict(weight_drop=0.3),
    "cell_clip": dict(cell_clip=0.3),
    "zoneout": dict(zoneout=(0.3, 0.2)),
    "recurrent_dropout": dict(recurrent_dropout=0.3),
    "grad_clip": dict(grad_clip=0.02),
    "layer_norm": dict(layer_norm=True),
    "all": dict(forget_bias=1.0, weight_drop=0.2, cell_clip=0.5, zoneout=(0.2, 0.1),
                recurrent_dropout=0.2, grad_clip=0.05, layer_norm=True),
}
GRU_FEATURES = {
    "weight_drop": dict(weight_drop=0.3),
    "zoneout": dict(zoneout=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.3),
    "grad_clip": dict(grad_clip=0.02),
    "layer_norm": dict(layer_norm=True),
}
CASES = [(kind, name, kw) for kind, table in (("LSTM", LSTM_FEATURES), ("GRU", GRU_FEATURES),
                                              ("RNN", GRU_FEATURES))  # the RNN takes the GRU's
         for name, kw in table.items()]
IDS = [f"{kind}-{name}" for kind, name, _ in CASES]
DETERMINISTIC_IN_TRAINING = {"forget_bias", "cell_clip", "grad_clip", "layer_norm"}
T, B = 6, 3


def _module(kind, features, layers=2):
    torch.manual_seed(0)
    m = getattr(fusedrnn, kind)(4, 5, num_layers=layers, dtype=torch.float64, **features)
    with torch.no_grad():  # larger weights: the clips and zoneout act on sizeable values
        for p in m.parameters():
            p.mul_(3)
    return m


def _inputs(kind):
    x = torch.randn(T, B, 4, dtype=torch.float64)
    h = torch.randn(2, B, 5, dtype=torch.float64)
    return x, (h, torch.randn(2, B, 5, dtype=torch.float64)) if kind == "LSTM" else h


@pytest.mark.parametrize("kind,name,features", CASES, ids=IDS)
def test_deterministic_features_step_and_chunks_match_one_long_call(kind, name, features):
    modes = ["eval"] + (["train"] if name in DETERMINISTIC_IN_TRAINING else [])
    for mode in modes:
        m = _module(kind, features).train(mode == "train")
        x, hx = _inputs(kind)
        expected = run(m, x, hx)
        for how, forward in (("step", _stepwise(m)), ("chunks", _chunked(m, [2, 1, 3]))):
            assert_results_close(run(m, x, hx, forward=forward), expected, TOL[torch.float64],
                                 f"{kind} {name} {mode} {how}")


@pytest.mark.parametrize("kind,name", [("LSTM", "grad_clip"), ("GRU", "grad_clip"),
                                       ("LSTM", "cell_clip")])
def test_clips_act_through_step(kind, name):
    """The clamps are active in the comparisons above: without them the results differ
    (grad_clip: the gradients only; cell_clip: the outputs too)."""
    x, hx = _inputs(kind)
    features = LSTM_FEATURES[name] if kind == "LSTM" else GRU_FEATURES[name]
    m = _module(kind, features)
    clipped = run(m, x, hx, forward=_stepwise(m))
    m = _module(kind, {})
    plain = run(m, x, hx, forward=_stepwise(m))
    assert not torch.allclose(clipped["grad_input"], plain["grad_input"])
    assert torch.equal(clipped["out0"], plain["out0"]) == (name == "grad_clip")


@pytest.mark.parametrize("kind,name,features", CASES, ids=IDS)
def test_features_in_training_through_tbptt_and_step(kind, name, features):
    m = _module(kind, features).train()
    x, hx = _inputs(kind)

    torch.manual_seed(7)
    chunks = [out for out, _ in fusedrnn.tbptt(m, x, 4, hx)]
    torch.manual_seed(7)
    by_hand, state = [], hx
    for chunk in x.split(4):
        out, state = m(chunk, state)
        by_hand.append(out)
        state = state.detach() if kind != "LSTM" else tuple(s.detach() for s in state)
    assert all(torch.equal(a, b) for a, b in zip(chunks, by_hand))

    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(_stepwise(m)(x, hx)[0])
    assert torch.equal(results[0], results[1])  # reproducible under a seed
    with torch.no_grad():
        evaluated = _stepwise(m.eval())(x, hx)[0]
    if name not in DETERMINISTIC_IN_TRAINING:  # a random mask acts while stepping
        assert not torch.allclose(results[0], evaluated)
