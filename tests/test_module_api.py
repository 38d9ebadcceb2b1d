"""The module API is torch.nn's: parameters, state_dict, initialisation, copying, pickling,
dtype conversion, repr, train/eval."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch

import fusedrnn
from conftest import TOL, assert_results_close, assert_results_equal, make_pair, run

F64 = torch.float64

CONFIGS = [
    pytest.param("LSTM", (3, 5), {}, id="LSTM"),
    pytest.param("LSTM", (3, 6), dict(num_layers=2, bidirectional=True, proj_size=2,
                                      batch_first=True, dropout=0.25), id="LSTM-L2-bi-proj"),
    pytest.param("LSTM", (4, 7), dict(num_layers=3, bias=False), id="LSTM-L3-nobias"),
    pytest.param("GRU", (3, 5), {}, id="GRU"),
    pytest.param("GRU", (4, 7), dict(num_layers=2, bidirectional=True, bias=False), id="GRU-L2-bi"),
    pytest.param("LSTMCell", (3, 5), {}, id="LSTMCell"),
    pytest.param("GRUCell", (3, 5), dict(bias=False), id="GRUCell-nobias"),
    pytest.param("RNN", (3, 5), dict(num_layers=2, bidirectional=True, nonlinearity="relu",
                                     batch_first=True), id="RNN-L2-bi-relu"),
    pytest.param("RNNCell", (3, 5), dict(nonlinearity="relu"), id="RNNCell-relu"),
]


def _inputs(kind, module, dtype=torch.float32):
    if kind.endswith("Cell"):
        return torch.randn(2, module.input_size, dtype=dtype)
    x = torch.randn(4, 2, module.input_size, dtype=dtype)
    return x.transpose(0, 1) if module.batch_first else x


def _outputs(module, x) -> list:
    out = module(x)
    flat = []
    for item in out if isinstance(out, tuple) else (out,):
        flat.extend(item if isinstance(item, tuple) else (item,))
    return flat


def _assert_same_outputs(a, b, x):
    for u, v in zip(_outputs(a, x), _outputs(b, x), strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_state_dict_names_and_shapes_match_torch(kind, args, kwargs):
    ref, fused = make_pair(kind, *args, **kwargs)
    ours, theirs = fused.state_dict(), ref.state_dict()
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, name
        assert ours[name].dtype == theirs[name].dtype, name
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert len(list(fused.parameters())) == len(list(ref.parameters()))
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in ref.parameters())
    for attr in ("input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(fused, attr, None) == getattr(ref, attr, None), attr


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_load_state_dict_both_ways(kind, args, kwargs):
    torch.manual_seed(1)
    ref = getattr(torch.nn, kind)(*args, dtype=F64, **kwargs).eval()
    torch.manual_seed(2)
    fused = getattr(fusedrnn, kind)(*args, dtype=F64, **kwargs).eval()
    x = _inputs(kind, ref, F64)
    # torch -> fused
    fused.load_state_dict(ref.state_dict(), strict=True)
    assert_results_close(run(fused, x), run(ref, x), TOL[F64], "torch -> fused")
    # fused -> torch, with new fused values
    torch.manual_seed(3)
    other = getattr(fusedrnn, kind)(*args, dtype=F64, **kwargs).eval()
    ref.load_state_dict(other.state_dict(), strict=True)
    for name, p in ref.named_parameters():
        assert torch.equal(p, other.get_parameter(name)), name
    assert_results_close(run(other, x), run(ref, x), TOL[F64], "fused -> torch")


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_initialisation_like_torch(kind, args, kwargs):
    torch.manual_seed(11)
    ref = getattr(torch.nn, kind)(*args, **kwargs)
    torch.manual_seed(11)
    fused = getattr(fusedrnn, kind)(*args, **kwargs)
    bound = 1 / math.sqrt(fused.hidden_size)
    for (name, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters(), strict=True):
        assert p.abs().max() <= bound, name
        assert p.unique().numel() > p.numel() // 2, f"{name} is not spread out"
        assert torch.equal(p, q), f"{name} differs from torch.nn's under the same seed"
    # ... and it is a real draw: a new seed gives new values
    torch.manual_seed(12)
    again = getattr(fusedrnn, kind)(*args, **kwargs)
    name = "weight_hh" if kind.endswith("Cell") else "weight_hh_l0"
    assert not torch.equal(again.get_parameter(name), fused.get_parameter(name))


@pytest.mark.parametrize("kind,args,kwargs", [c for c in CONFIGS if "Cell" not in c.id])
def test_flatten_parameters_runs(kind, args, kwargs):
    _, fused = make_pair(kind, *args, **kwargs)
    x = _inputs(kind, fused)
    before = _outputs(fused.eval(), x)
    assert fused.flatten_parameters() is None
    for u, v in zip(before, _outputs(fused, x), strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_pickle_round_trip(kind, args, kwargs):
    _, fused = make_pair(kind, *args, **kwargs)
    fused.eval()
    x = _inputs(kind, fused)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(fused)
    _assert_same_outputs(loaded, fused, x)
    unpickled = pickle.loads(pickle.dumps(fused))
    assert type(unpickled) is type(fused)
    _assert_same_outputs(unpickled, fused, x)
    # state_dict through torch.save with weights_only=True (the safe default)
    buffer = io.BytesIO()
    torch.save(fused.state_dict(), buffer)
    buffer.seek(0)
    fresh = getattr(fusedrnn, kind)(*args, **kwargs).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    _assert_same_outputs(fresh, fused, x)


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_deepcopy(kind, args, kwargs):
    _, fused = make_pair(kind, *args, **kwargs)
    fused.eval()
    clone = copy.deepcopy(fused)
    x = _inputs(kind, fused)
    _assert_same_outputs(clone, fused, x)
    for p, q in zip(clone.parameters(), fused.parameters(), strict=True):
        assert p.data_ptr() != q.data_ptr()
    with torch.no_grad():
        next(clone.parameters()).add_(1.0)
    assert not torch.equal(_outputs(clone, x)[0], _outputs(fused, x)[0])


@pytest.mark.parametrize("convert", [
    pytest.param(lambda m: m.double(), id="double"),
    pytest.param(lambda m: m.to(torch.float64), id="to_float64"),
    pytest.param(lambda m: m.to(dtype=torch.float64).float(), id="double_then_float"),
])
@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_dtype_conversion_still_matches_torch(kind, args, kwargs, convert):
    ref, fused = make_pair(kind, *args, **kwargs)
    ref.eval(), fused.eval()  # no dropout masks to match
    assert convert(fused) is fused
    ref = convert(ref)
    dtype = ref.weight_hh_l0.dtype if hasattr(ref, "weight_hh_l0") else ref.weight_hh.dtype
    assert all(p.dtype == dtype for p in fused.parameters())
    x = _inputs(kind, fused, dtype)
    result = run(fused, x)
    assert result["out0"].dtype == dtype
    assert_results_close(result, run(ref, x), TOL[dtype], f"after conversion to {dtype}")


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_repr_names_class_and_arguments(kind, args, kwargs):
    ref, fused = make_pair(kind, *args, **kwargs)
    text = repr(fused)
    assert text == repr(ref)
    assert text.startswith(f"{kind}({args[0]}, {args[1]}")
    for key, value in kwargs.items():
        if (kind, key) == ("RNN", "nonlinearity"):
            continue  # torch.nn.RNN's repr omits it (its cell's shows it); ours is torch's
        assert f"{key}={value}" in text, key


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_is_a_module_with_train_and_eval(kind, args, kwargs):
    _, fused = make_pair(kind, *args, **kwargs)
    assert isinstance(fused, torch.nn.Module)
    assert fused.training
    assert fused.eval() is fused and not fused.training
    assert fused.train() is fused and fused.training
    assert fused.train(False) is fused and not fused.training


@pytest.mark.parametrize("kind,args,kwargs", CONFIGS)
def test_inference_mode_and_no_grad_match_torch(kind, args, kwargs):
    ref, fused = make_pair(kind, *args, dtype=F64, **kwargs)
    ref.eval(), fused.eval()
    x = _inputs(kind, fused, F64)
    expected = _outputs(ref, x)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            got = _outputs(fused, x)
        for u, v in zip(got, expected, strict=True):
            assert not u.requires_grad
            torch.testing.assert_close(u, v, atol=TOL[F64], rtol=0)


def test_state_dict_from_torch_checkpoint_file():
    """The drop-in workflow of the README: a torch.nn checkpoint loads into fusedrnn."""
    ref = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=F64)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    fused = fusedrnn.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=F64)
    fused.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_results_close(run(fused, x), run(ref, x), TOL[F64], "checkpoint")
    # and fusedrnn runs are reproducible from the same checkpoint
    assert_results_equal(run(fused, x), run(fused, x))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_isinstance_of_torch_classes(kind):
    """Cells are instances of torch.nn's cells; LSTM/GRU of torch.nn's RNNBase only (torch.compile
    refuses to trace an instance of torch.nn.LSTM/GRU; see the README's Limits)."""
    module = getattr(fusedrnn, kind)(3, 5)
    base = torch.nn.modules.rnn.RNNCellBase if kind.endswith("Cell") else torch.nn.RNNBase
    assert isinstance(module, base)
    assert isinstance(module, getattr(torch.nn, kind)) == kind.endswith("Cell")


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_vmap_of_forward_matches_torch_nn_per_element(kind):
    """README, Limits: torch.func.vmap of a forward runs on torch's per-element fallback
    (torch.nn's own LSTM, GRU and LSTMCell refuse vmap) and matches torch.nn on each
    element."""
    cell = kind.endswith("Cell")
    ref, fused = make_pair(kind, 3, 5, **({} if cell else dict(num_layers=2)))
    x = torch.randn(4, 2, 3) if cell else torch.randn(4, 6, 2, 3)
    got = torch.func.vmap(lambda xi: fused(xi)[0])(x)
    expected = torch.stack([ref(xi)[0] for xi in x])
    torch.testing.assert_close(got, expected, atol=TOL[torch.float32], rtol=0)


class _CountingIdentity(torch.nn.Module):
    """A parametrization that counts its evaluations (and scales, so that it matters)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, weight):
        self.calls += 1
        return weight * 0.9


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_each_parametrized_weight_is_evaluated_once_per_forward(kind):
    """README, Limits: one evaluation of each parametrized weight per forward (torch.nn's
    LSTM and GRU evaluate theirs four times: under spectral_norm, four power iterations),
    with grad and without, and per ``step``; the results are torch.nn's."""
    kwargs = {} if kind.endswith("Cell") else dict(num_layers=2, bidirectional=kind == "GRU")
    ref, fused = make_pair(kind, 3, 5, **kwargs)
    counters = {}
    for module in (ref, fused):
        for name, _ in list(module.named_parameters()):
            counters[module, name] = _CountingIdentity()
            torch.nn.utils.parametrize.register_parametrization(module, name,
                                                                counters[module, name])
    x = torch.randn(2, 3) if kind.endswith("Cell") else torch.randn(4, 2, 3)
    calls = [lambda: fused(x), torch.no_grad()(lambda: fused(x))]
    if kind in ("LSTM", "RNN"):  # unidirectional: step runs
        calls.append(lambda: fused.step(x[0]))
    for call in calls:
        for (module, name), counter in counters.items():
            counter.calls = 0
        call()
        counts = {name: c.calls for (m, name), c in counters.items() if m is fused}
        assert set(counts.values()) == {1}, counts
    assert_results_close(run(fused, x), run(ref, x), TOL[torch.float32], kind)


def _fork_child(kind, x, expected, conn):
    module = getattr(fusedrnn, kind)(3, 5, num_layers=2)
    torch.manual_seed(0)
    module.load_state_dict(_fork_child.state)
    out = module(x)[0]
    conn.send(float((out - expected).abs().max()))
    conn.close()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_forked_children_run_and_never_hang(kind):
    """After the parent has run a module on two threads (the persistent loop's team), 20
    forked children (DataLoader workers, prefork servers) each run it to the parent's
    results; a hang fails within its bound instead of stalling CI."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        module = getattr(fusedrnn, kind)(3, 5, num_layers=2)
        x = torch.randn(30, 4, 3)
        expected = module(x)[0].detach()  # the parent's team is now up
        _fork_child.state = module.state_dict()
        for child in range(20):
            receive, send = fork.Pipe(duplex=False)
            process = fork.Process(target=_fork_child, args=(kind, x, expected, send))
            process.start()
            send.close()
            ready = receive.poll(60)
            process.join(0 if not ready else 60)
            if process.is_alive():
                process.kill()
                process.join()
            assert ready, f"forked child {child} hung (no result in 60 s)"
            assert receive.recv() <= TOL[torch.float32], f"child {child}"
            assert process.exitcode == 0, f"child {child} exit code {process.exitcode}"
    finally:
        torch.set_num_threads(saved_threads)
