"""torch.export of fusedrnn models: static and dynamic shapes, save/load, training.

The exported graph holds the fused ops (``torch.ops.fusedrnn.*``) themselves;
loading a saved program needs ``import fusedrnn`` (which registers them) and
nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.export import Dim

import fusedrnn
from conftest import TOL, assert_results_close, run

ATOL = TOL[torch.float32]
CONFIGS = {
    "LSTM-L2-bi-proj": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    "LSTM-batch_first": ("LSTM", dict(batch_first=True)),
    "GRU-L2-bi": ("GRU", dict(num_layers=2, bidirectional=True)),
    "GRU-batch_first-nobias": ("GRU", dict(batch_first=True, bias=False)),
    "LSTM-L2-bi-layer_norm": ("LSTM", dict(num_layers=2, bidirectional=True, layer_norm=True)),
    "GRU-layer_norm": ("GRU", dict(layer_norm=True)),
    "RNN-L2-bi-relu": ("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu")),
    "RNN-layer_norm": ("RNN", dict(layer_norm=True)),
}
INPUT, HIDDEN = 5, 6
EXPORT_SHAPE = (7, 4)  # (T, B) traced at export
OTHER_SHAPES = [(3, 2), (11, 5), (1, 1)]  # (T, B) run on the dynamic program


def _model(name: str) -> torch.nn.Module:
    kind, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    return getattr(fusedrnn, kind)(INPUT, HIDDEN, **kwargs)


def _input(model, steps: int, batch: int) -> torch.Tensor:
    shape = (batch, steps, INPUT) if model.batch_first else (steps, batch, INPUT)
    return torch.randn(shape)


def _dynamic(model) -> tuple:
    steps, batch = Dim("steps", min=1, max=1024), Dim("batch", min=1, max=1024)
    return ({0: batch, 1: steps} if model.batch_first else {0: steps, 1: batch},)


def _flat(result) -> list:
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _assert_same(actual, expected):
    for a, e in zip(_flat(actual), _flat(expected), strict=True):
        assert a.shape == e.shape
        err = (a - e).abs().max().item()
        assert err <= ATOL, f"{err:.2e} > {ATOL:.0e}"


def _fused_ops(program) -> set:
    return {str(n.target) for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("fusedrnn.")}


@pytest.mark.parametrize("name", CONFIGS)
def test_static_export_matches_eager(name):
    model = _model(name)
    x = _input(model, *EXPORT_SHAPE)
    program = torch.export.export(model, (x,))
    assert _fused_ops(program), "the exported graph does not call the fused ops"
    _assert_same(program.module()(x), model(x))


@pytest.mark.parametrize("name", CONFIGS)
def test_dynamic_batch_and_steps(name):
    model = _model(name)
    program = torch.export.export(model, (_input(model, *EXPORT_SHAPE),),
                                  dynamic_shapes=_dynamic(model))
    exported = program.module()
    for steps, batch in OTHER_SHAPES:
        x = _input(model, steps, batch)
        _assert_same(exported(x), model(x))


def test_static_program_rejects_other_shapes():
    model = _model("GRU-L2-bi")
    program = torch.export.export(model, (_input(model, *EXPORT_SHAPE),))
    with pytest.raises(AssertionError, match=r"Guard failed: input.size\(\)\[0\] == 7"):
        program.module()(_input(model, 3, 2))


def test_lstm_with_initial_state_dynamic():
    model = _model("LSTM-L2-bi-proj")
    T, B = EXPORT_SHAPE
    states = (torch.randn(4, B, 3), torch.randn(4, B, HIDDEN))
    batch, steps = Dim("batch", min=1, max=1024), Dim("steps", min=1, max=1024)
    program = torch.export.export(model, (_input(model, T, B), states),
                                  dynamic_shapes=({0: steps, 1: batch},
                                                  ({1: batch}, {1: batch})))
    x = _input(model, 9, 3)
    hx = (torch.randn(4, 3, 3), torch.randn(4, 3, HIDDEN))
    _assert_same(program.module()(x, hx), model(x, hx))


@pytest.mark.parametrize("name", ["LSTM-L2-bi-proj", "GRU-L2-bi"])
def test_training_through_exported_module(name):
    """Forward and backward of ``ExportedProgram.module()``: outputs and every gradient."""
    model = _model(name)
    program = torch.export.export(model, (_input(model, *EXPORT_SHAPE),),
                                  dynamic_shapes=_dynamic(model))
    exported = program.module()
    assert [n for n, _ in exported.named_parameters()] == [n for n, _ in model.named_parameters()]
    x = _input(model, 9, 3)
    expected = run(model, x, forward=lambda inp, hx: model(inp))
    actual = run(exported, x, forward=lambda inp, hx: exported(inp))
    assert_results_close(actual, expected, ATOL, name)


_LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import fusedrnn  # registers torch.ops.fusedrnn: the only requirement
    outputs = {}
    for name, (path, inputs) in torch.load(sys.argv[1]).items():
        program = torch.export.load(path)
        outputs[name] = [list(program.module()(x)) for x in inputs]
    torch.save(outputs, sys.argv[2])
""")


def test_save_load_round_trip_in_fresh_process(tmp_path):
    """Programs saved here load and run in a new interpreter that imports only fusedrnn."""
    models, jobs = {}, {}
    for name in ("LSTM-L2-bi-proj", "GRU-batch_first-nobias"):
        model = models[name] = _model(name)
        program = torch.export.export(model, (_input(model, *EXPORT_SHAPE),),
                                      dynamic_shapes=_dynamic(model))
        path = str(tmp_path / f"{name}.pt2")
        torch.export.save(program, path)
        jobs[name] = (path, [_input(model, *shape) for shape in [EXPORT_SHAPE, *OTHER_SHAPES]])
    torch.save(jobs, tmp_path / "jobs.pt")
    script = tmp_path / "load.py"
    script.write_text(_LOAD_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "jobs.pt"),
                           str(tmp_path / "outputs.pt")],
                          capture_output=True, text=True, timeout=120, env=_env_with_fusedrnn())
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    for name, (_, inputs) in jobs.items():
        for x, (out, state) in zip(inputs, outputs[name], strict=True):
            _assert_same((out, state), models[name](x))


def test_load_without_fusedrnn_names_the_missing_op(tmp_path):
    """The requirement is real: without ``import fusedrnn`` the ops are unknown."""
    model = _model("GRU-L2-bi")
    torch.export.save(torch.export.export(model, (_input(model, *EXPORT_SHAPE),)),
                      tmp_path / "model.pt2")
    code = f"import torch; torch.export.load({str(tmp_path / 'model.pt2')!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=_env_with_fusedrnn())
    assert proc.returncode != 0
    assert "torch.ops.fusedrnn.gru_forward" in proc.stderr


def _env_with_fusedrnn() -> dict:
    """This process's environment, with the fusedrnn it imported on the path."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedrnn.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
