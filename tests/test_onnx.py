"""ONNX export of fusedrnn models: ONNX's own LSTM/GRU nodes, run in ONNX Runtime.

Each model is exported once, with a dynamic batch and sequence length, then run
by ONNX Runtime (CPU) in a separate process that has no fusedrnn, at batch and
sequence lengths other than the exported ones, and compared with eager
fusedrnn at fp32 tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import onnx  # onnx, onnxscript, onnxruntime: test dependencies that make test installs
import pytest
import torch
from torch.export import Dim

import fusedrnn
import fusedrnn.onnx  # registers the translations
from conftest import TOL

ATOL = TOL[torch.float32]
INPUT = 5
EXPORT_SHAPE = (7, 3)  # (steps, batch) at export
RUN_SHAPES = [(11, 5), (1, 1), (4, 2)]  # (steps, batch) run in ONNX Runtime


class Tagger(torch.nn.Module):
    """A model holding a fusedrnn layer: recurrent layer, then a linear read-out."""

    def __init__(self, kind: str, **kwargs):
        super().__init__()
        self.rnn = getattr(fusedrnn, kind)(INPUT, 6, **kwargs)
        width = 6 * (2 if self.rnn.bidirectional else 1)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x, hx=None):
        out, state = self.rnn(x, hx)
        return (self.head(out), *(state if isinstance(state, tuple) else (state,)))


# name -> (kind, constructor arguments, whether the initial state is an input)
CASES = {
    "LSTM-L2-bi-batch_first": ("LSTM", dict(num_layers=2, bidirectional=True,
                                            batch_first=True), False),
    "LSTM-nobias-with-state": ("LSTM", dict(bias=False), True),
    "GRU-L2-bi": ("GRU", dict(num_layers=2, bidirectional=True), False),
    "GRU-batch_first-nobias-with-state": ("GRU", dict(batch_first=True, bias=False), True),
    "RNN-L2-bi-with-state": ("RNN", dict(num_layers=2, bidirectional=True), True),
    "RNN-relu-batch_first-nobias": ("RNN", dict(nonlinearity="relu", batch_first=True,
                                                bias=False), False),
}


def _model(name: str) -> Tagger:
    kind, kwargs, _ = CASES[name]
    torch.manual_seed(0)
    model = Tagger(kind, **kwargs).eval()
    with torch.no_grad():  # biases large enough that a misplaced one shows
        for pname, p in model.rnn.named_parameters():
            if pname.startswith("bias"):
                p.uniform_(-1, 1)
    return model


def _inputs(name: str, model: Tagger, steps: int, batch: int) -> tuple:
    rnn = model.rnn
    x = torch.randn((batch, steps, INPUT) if rnn.batch_first else (steps, batch, INPUT))
    if not CASES[name][2]:
        return (x,)
    layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
    states = tuple(torch.randn(layers, batch, 6) for _ in range(2 if CASES[name][0] == "LSTM"
                                                                else 1))
    return (x, states if len(states) == 2 else states[0])


def _dynamic_shapes(name: str, model: Tagger) -> tuple:
    steps, batch = Dim("steps", min=1, max=4096), Dim("batch", min=1, max=4096)
    x = {0: batch, 1: steps} if model.rnn.batch_first else {0: steps, 1: batch}
    if not CASES[name][2]:
        return (x,)
    state = {1: batch}
    return (x, (state, state) if CASES[name][0] == "LSTM" else state)


def _flat_inputs(inputs: tuple) -> list:
    flat = []
    for item in inputs:
        flat.extend(item if isinstance(item, tuple) else (item,))
    return [t.numpy() for t in flat]


_ORT_SCRIPT = textwrap.dedent("""
    import importlib.util, pickle, sys
    import onnxruntime
    assert importlib.util.find_spec("fusedrnn") is None, "fusedrnn is importable here"
    session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    with open(sys.argv[2], "rb") as f:
        runs = pickle.load(f)
    with open(sys.argv[3], "wb") as f:
        pickle.dump([session.run(None, dict(zip(names, run))) for run in runs], f)
""")


def _run_in_onnxruntime(path, runs: list, tmp_path) -> list:
    """Outputs of ``path`` on each input list, from a process without fusedrnn."""
    import pickle

    (tmp_path / "runs.pkl").write_bytes(pickle.dumps(runs))
    (tmp_path / "ort_run.py").write_text(_ORT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "ort_run.py", str(path), "runs.pkl", "outputs.pkl"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return pickle.loads((tmp_path / "outputs.pkl").read_bytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported once: name -> (model, ONNX path)."""
    folder = tmp_path_factory.mktemp("onnx")
    result = {}
    for name in CASES:
        model = _model(name)
        program = torch.onnx.export(model, _inputs(name, model, *EXPORT_SHAPE),
                                    dynamic_shapes=_dynamic_shapes(name, model))
        path = folder / f"{name}.onnx"
        program.save(str(path))
        result[name] = (model, path)
    return result


@pytest.mark.parametrize("name", CASES)
def test_graph_uses_onnx_rnn_operators(exported, name):
    model, path = exported[name]
    graph = onnx.load(str(path))
    node_types = [node.op_type for node in graph.graph.node]
    layers = model.rnn.num_layers * (2 if model.rnn.bidirectional else 1)
    assert node_types.count(CASES[name][0]) == layers, node_types
    assert not {"Loop", "Scan", "If", "Sigmoid", "Tanh"} & set(node_types), node_types
    assert {node.domain for node in graph.graph.node} == {""}, "custom domain in the graph"
    assert not graph.functions, [f.name for f in graph.functions]
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}


@pytest.mark.parametrize("name", CASES)
def test_onnxruntime_matches_eager(exported, name, tmp_path):
    model, path = exported[name]
    inputs = [_inputs(name, model, steps, batch) for steps, batch in RUN_SHAPES]
    outputs = _run_in_onnxruntime(path, [_flat_inputs(i) for i in inputs], tmp_path)
    for run_inputs, got, shape in zip(inputs, outputs, RUN_SHAPES, strict=True):
        with torch.no_grad():
            want = model(*run_inputs)
        assert len(got) == len(want)
        for k, (g, w) in enumerate(zip(got, want)):
            assert tuple(g.shape) == tuple(w.shape), f"{shape} output {k}: {g.shape} vs {w.shape}"
            err = (torch.from_numpy(g) - w).abs().max().item()
            assert err <= ATOL, f"(steps, batch)={shape} output {k}: {err:.2e} > {ATOL:.0e}"


def test_translation_table_for_custom_translation_table():
    """The explicit mapping exports the same graph as the registered one."""
    model = _model("GRU-L2-bi")
    x = _inputs("GRU-L2-bi", model, *EXPORT_SHAPE)
    program = torch.onnx.export(model, x, custom_translation_table=fusedrnn.onnx.TRANSLATIONS)
    node_types = [node.op_type for node in program.model_proto.graph.node]
    assert node_types.count("GRU") == 4


@pytest.mark.parametrize("kind,kwargs,names,why", [
    ("LSTM", dict(proj_size=3), "proj_size", "no projection"),
    ("LSTM", dict(layer_norm=True), "layer_norm", "no normalisation"),
    ("GRU", dict(layer_norm=True), "layer_norm", "no normalisation"),
    ("RNN", dict(layer_norm=True, nonlinearity="relu"), "layer_norm", "no normalisation")])
def test_what_onnx_cannot_express_is_a_clear_error(kind, kwargs, names, why):
    model = getattr(fusedrnn, kind)(INPUT, 6, **kwargs).eval()
    with pytest.raises(torch.onnx.OnnxExporterError, match=names) as info:
        torch.onnx.export(model, (torch.randn(*EXPORT_SHAPE, INPUT),))
    cause = info.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and why in str(cause)
