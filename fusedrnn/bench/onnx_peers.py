"""CPU inference peers that run an ONNX file: ONNX Runtime and OpenVINO.

What a user picks for CPU inference instead of torch.nn: export the model to
ONNX and run it in an inference runtime. Each peer exports the fusedrnn module
(loaded with the baseline's weights) with ``fusedrnn.onnx`` (one ONNX
``LSTM``/``GRU``/``RNN`` node per layer and direction), opens it in its
runtime on as many threads as torch has, and is gated like every peer before
it is timed. Optional extras (``pip install fusedrnn[bench]``): a runtime that
is not installed gives ``skipped`` rows. fp32, inference only.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Optional

import torch

from .configs import Config, module_class
from .peers import BuiltPeer, Peer


class _StatesAsArguments(torch.nn.Module):
    """``module(x, hx)`` with the states as separate tensors in and out, as an ONNX
    graph takes and gives them."""

    def __init__(self, module: torch.nn.Module, lstm: bool):
        super().__init__()
        self.module, self.lstm = module, lstm

    def forward(self, x, h0, c0=None):
        if self.lstm:
            out, (h_n, c_n) = self.module(x, (h0, c0))
            return out, h_n, c_n
        out, h_n = self.module(x, h0)
        return out, h_n


def export_onnx(cfg: Config, baseline: torch.nn.Module, x, hx, folder: str) -> str:
    """The fusedrnn module of ``cfg`` with the baseline's weights, exported to
    ``folder``/model.onnx at the shapes of ``x``, ``hx``; returns the path."""
    import fusedrnn
    import fusedrnn.onnx  # noqa: F401  (registers the translations to ONNX's RNN operators)

    cls, kwargs = module_class(fusedrnn, cfg.cell)
    module = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional, **kwargs)
    module.load_state_dict(baseline.state_dict())
    wrapper = _StatesAsArguments(module, cfg.cell == "lstm").eval()
    states = tuple(hx) if cfg.cell == "lstm" else (hx,)
    path = os.path.join(folder, "model.onnx")
    with torch.no_grad():
        torch.onnx.export(wrapper, (x, *states), dynamo=True).save(path)
    return path


def _as_module_result(outputs: list, lstm: bool):
    out, *states = (torch.from_numpy(o) for o in outputs)
    return (out, tuple(states)) if lstm else (out, states[0])


class OnnxFilePeer(Peer):
    """A runtime that runs the exported file: subclasses give ``package`` and
    :meth:`open`, which returns ``run(feed) -> list of arrays``."""

    package = ""

    def skip_reason(self, cfg: Config) -> Optional[str]:
        if importlib.util.find_spec(self.package) is None:
            return f"{self.name}: not installed (pip install fusedrnn[bench])"
        if importlib.util.find_spec("onnxscript") is None:
            return f"{self.name}: the ONNX export needs onnxscript (pip install fusedrnn[onnx])"
        if cfg.device != "cpu":
            return f"{self.name}: CPU only here"
        if cfg.mode != "infer":
            return f"{self.name}: inference only"
        if cfg.dtype != "float32":
            return f"{self.name}: float32 only here"
        return None

    def open(self, path: str, threads: int):
        raise NotImplementedError

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        lstm = cfg.cell == "lstm"
        x = torch.zeros(cfg.T, cfg.B, cfg.I)
        h0, c0 = (torch.zeros(cfg.layers * (2 if cfg.bidirectional else 1), cfg.B, cfg.H)
                  for _ in range(2))  # two tensors: the exporter would merge one passed twice
        with tempfile.TemporaryDirectory() as folder:
            path = export_onnx(cfg, baseline, x, (h0, c0) if lstm else h0, folder)
            run = self.open(path, torch.get_num_threads())

        def feed(x, hx):
            states = hx if lstm else (hx,)
            return [t.detach().numpy() for t in (x, *states)]

        def forward(x, hx):
            return _as_module_result(run(feed(x, hx)), lstm)

        def prepare(x, hx):
            arrays = feed(x, hx)  # the conversion to numpy is not timed
            return lambda: torch.from_numpy(run(arrays)[0])

        return BuiltPeer(forward, {}, note=f"fusedrnn.onnx export, {torch.get_num_threads()} "
                                           "threads", prepare=prepare)


class OnnxRuntimePeer(OnnxFilePeer):
    """ONNX Runtime's CPU execution provider, intra-op threads = torch's."""

    name, package = "onnxruntime", "onnxruntime"

    def open(self, path: str, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda arrays: session.run(None, dict(zip(names, arrays)))


class OpenVINOPeer(OnnxFilePeer):
    """OpenVINO's CPU plugin on the ONNX file, latency hint, threads = torch's."""

    name, package = "openvino", "openvino"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        if cfg.bidirectional:
            # Seen with OpenVINO 2026.4: its results on the reverse-direction nodes
            # differ from torch.nn's and ONNX Runtime's (the gate fails); not ours to time.
            return "openvino: wrong results on the export's reverse-direction nodes"
        return super().skip_reason(cfg)

    def open(self, path: str, threads: int):
        import openvino

        core = openvino.Core()
        # fp32 throughout: by default the CPU plugin computes in bf16 where the CPU has it.
        compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                    "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run(arrays):
            results = request.infer(arrays)  # views of the request's buffers: copied out
            return [results[out].copy() for out in compiled.outputs]
        return run


ONNX_PEERS = {"onnxruntime": OnnxRuntimePeer, "openvino": OpenVINOPeer}
