"""The toolkit's layer_norm: its semantics against an oracle built from torch.nn's own
LayerNorm and Linear, its parameters, and its inference path.

Parity of the fused kernels with the reference, in every form and combination, is in
test_features.py (the ``layer_norm`` and ``all`` cases); streaming in
test_streaming_features.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

import fusedrnn
from fusedrnn import ops
from conftest import TOL, kind_class, run

T, B, I, H = 5, 3, 4, 6


def _module(kind: str, **kwargs):
    torch.manual_seed(0)
    module = getattr(fusedrnn, kind)(I, H, layer_norm=True, dtype=torch.float64, **kwargs)
    with torch.no_grad():  # gains and biases away from 1 and 0
        for name, p in module.named_parameters():
            if name.startswith("layer_norm"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
    return module


def _oracle(module, x, h, c=None):
    """haste's layer-norm LSTM / GRU (and its form for the Elman RNN: the norms on both
    products, the biases after), written out with the module's own LayerNorms."""
    w_ih, w_hh = module.weight_ih_l0, module.weight_hh_l0
    norm_ih, norm_hh = module.layer_norm_ih_l0, module.layer_norm_hh_l0
    outputs = []
    for x_t in x:
        if module.mode == "LSTM":
            gates = (norm_ih(F.linear(x_t, w_ih)) + norm_hh(F.linear(h, w_hh))
                     + module.bias_ih_l0 + module.bias_hh_l0)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * module.layer_norm_c_l0(c).tanh()
        elif module.mode.startswith("RNN"):
            act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
            h = act(norm_ih(F.linear(x_t, w_ih)) + norm_hh(F.linear(h, w_hh))
                    + module.bias_ih_l0 + module.bias_hh_l0)
        else:
            x_r, x_z, x_n = (norm_ih(F.linear(x_t, w_ih)) + module.bias_ih_l0).chunk(3, dim=-1)
            h_r, h_z, h_n = (norm_hh(F.linear(h, w_hh)) + module.bias_hh_l0).chunk(3, dim=-1)
            r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
            n = (x_n + r * h_n).tanh()
            h = (1 - z) * n + z * h
        outputs.append(h)
    return torch.stack(outputs), (h, c) if module.mode == "LSTM" else h


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "RNN_RELU"])
def test_layer_norm_is_hastes_form(kind, device):
    """Outputs, states and every gradient (the LayerNorms' included) as the oracle's."""
    cls, extra = kind_class(kind)
    module = device.to(_module(cls, **extra))
    gen = torch.Generator().manual_seed(1)
    x = device.to(torch.randn(T, B, I, generator=gen, dtype=torch.float64))
    h0 = device.to(torch.randn(1, B, H, generator=gen, dtype=torch.float64))
    hx = (h0, device.to(torch.randn(1, B, H, generator=gen, dtype=torch.float64))) \
        if kind == "LSTM" else h0

    def oracle(x, hx):
        out, final = _oracle(module, x, *(s[0] for s in (hx if kind == "LSTM" else (hx,))))
        return out, tuple(s.unsqueeze(0) for s in final) if kind == "LSTM" else final[None]

    expected = run(module, x, hx, forward=oracle)
    actual = run(module, x, hx)
    for key, e in expected.items():
        err = (actual[key] - e).abs().max().item()
        assert err <= TOL[torch.float64], f"{kind} {key}: {err:.2e}"


def test_parameter_names_and_initialisation():
    lstm = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True)
    names = {n for n in lstm.state_dict() if n.startswith("layer_norm")}
    expected = {f"layer_norm_{part}_l{k}{suffix}.{p}" for part in ("ih", "hh", "c")
                for k in (0, 1) for suffix in ("", "_reverse") for p in ("weight", "bias")}
    assert names == expected
    assert lstm.layer_norm_ih_l1_reverse.weight.shape == (4 * H,)
    assert lstm.layer_norm_c_l0.bias.shape == (H,)
    for hidden_only in (fusedrnn.GRU(I, H, layer_norm=True), fusedrnn.RNN(I, H, layer_norm=True)):
        assert {n for n in hidden_only.state_dict() if n.startswith("layer_norm")} == {
            "layer_norm_ih_l0.weight", "layer_norm_ih_l0.bias",
            "layer_norm_hh_l0.weight", "layer_norm_hh_l0.bias"}
    # torch.nn's part of the state_dict is unchanged: its weights load with strict=False only
    plain = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict()
    missing, unexpected = lstm.load_state_dict(plain, strict=False)
    assert not unexpected and set(missing) == expected
    # reset_parameters (RNNBase's draws every parameter) leaves the norms at gain 1, bias 0
    with torch.no_grad():
        lstm.layer_norm_hh_l0.weight.fill_(3)
    lstm.reset_parameters()
    assert torch.equal(lstm.layer_norm_hh_l0.weight, torch.ones(4 * H))
    assert torch.equal(lstm.layer_norm_c_l1_reverse.bias, torch.zeros(H))
    assert "layer_norm=True" in repr(lstm)


def test_cell_parameter_names():
    assert [n for n in fusedrnn.LSTMCell(I, H, layer_norm=True).state_dict()
            if n.startswith("layer_norm")] == [
        "layer_norm_ih.weight", "layer_norm_ih.bias", "layer_norm_hh.weight",
        "layer_norm_hh.bias", "layer_norm_c.weight", "layer_norm_c.bias"]
    cell = fusedrnn.GRUCell(I, H, layer_norm=True)
    assert cell.layer_norm_hh.weight.shape == (3 * H,) and not hasattr(cell, "layer_norm_c")
    cell = fusedrnn.RNNCell(I, H, layer_norm=True)
    assert cell.layer_norm_ih.weight.shape == (H,) and not hasattr(cell, "layer_norm_c")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_inference_path_matches_training_forward(kind, device):
    """Without autograd the ops save nothing and normalise in scratch buffers: the same
    outputs and states as a training forward."""
    module = device.to(_module(kind, num_layers=2, bidirectional=True))
    x = device.to(torch.randn(T, B, I, dtype=torch.float64))
    trained = module(x)
    with torch.no_grad():
        inferred = module(x)
    for a, e in zip(torch.utils._pytree.tree_leaves(inferred),
                    torch.utils._pytree.tree_leaves(trained)):
        assert (a - e).abs().max().item() <= TOL[torch.float64]


def test_projection_is_refused_by_the_op_layer():
    """The module refuses proj_size with layer_norm (test_features.py); the layer function
    too, with the same words."""
    x, h, c = torch.randn(T, B, I), torch.randn(B, 3), torch.randn(B, H)
    pair = (torch.ones(4 * H), torch.zeros(4 * H))
    norms = (pair, pair, (torch.ones(H), torch.zeros(H)))
    if not ops.use_extension():
        pytest.skip("the reference computes a projected layer_norm LSTM; the ops refuse it")
    with pytest.raises(ValueError, match="proj_size"):
        ops.lstm_layer(x, torch.randn(4 * H, I), None, torch.randn(4 * H, 3),
                       torch.randn(3, H), h, c, layer_norm=norms)
