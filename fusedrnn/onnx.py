"""ONNX export: each fused layer becomes one node of ONNX's own ``LSTM``, ``GRU`` or ``RNN``.

    import fusedrnn.onnx  # registers the translations below (needs onnx and onnxscript)
    torch.onnx.export(model, (x,), "model.onnx", dynamic_shapes=...)

``torch.onnx.export`` (the ``torch.export``-based exporter) meets
``torch.ops.fusedrnn.lstm_forward`` / ``gru_forward`` / ``rnn_tanh_forward`` /
``rnn_relu_forward`` in the graph, one call per layer and direction, and
translates each with the functions here into a single ONNX ``LSTM``, ``GRU`` or
``RNN`` node (direction ``forward`` or ``reverse``): no loop
over time steps, no custom domain, so ONNX Runtime runs the file without
fusedrnn. The weights are rearranged into ONNX's layout (constant-folded at
export): gates ``i,f,g,o`` become ``i,o,f,c`` and ``r,z,n`` become ``z,r,h``;
LSTM's and RNN's summed bias goes into ``Wb`` with ``Rb = 0``; GRU keeps ``b_ih``
and ``b_hh`` apart and uses ``linear_before_reset=1``, which is torch's
equation; the RNN's activation is ``Tanh`` or ``Relu``.

``TRANSLATIONS`` is the same mapping for ``custom_translation_table=``.

ONNX's LSTM has no projection: a model with ``proj_size > 0`` cannot be
expressed without a loop over time, so its export fails with an error naming
``proj_size``; likewise a model with ``layer_norm=True`` (an error naming it).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

try:
    from onnxscript import ir
    from onnxscript.function_libs.torch_lib.registration import torch_op
    from onnxscript.function_libs.torch_lib.tensor_typing import TFloat, TInt
    from onnxscript.onnx_opset import opset18 as op
except ImportError as exc:
    raise ImportError("fusedrnn.onnx needs onnx and onnxscript: "
                      "pip install onnx onnxscript (or fusedrnn[onnx])") from exc

from . import ops

__all__ = ["TRANSLATIONS", "lstm_forward", "gru_forward", "rnn_tanh_forward",
           "rnn_relu_forward"]

# Row blocks of torch's stacked gate weights, in ONNX's gate order.
LSTM_GATE_ORDER = (0, 3, 1, 2)  # torch i,f,g,o -> ONNX i,o,f,c
GRU_GATE_ORDER = (1, 0, 2)  # torch r,z,n -> ONNX z,r,h

PROJ_SIZE_ERROR = (
    "fusedrnn.onnx: cannot export an LSTM with proj_size > 0 (weight_hr): ONNX's LSTM "
    "operator has no projection, and expressing one would need a loop over time steps. "
    "Export the model without proj_size, or keep it in torch.export.")


LAYER_NORM_ERROR = (
    "fusedrnn.onnx: cannot export a module with layer_norm=True: ONNX's LSTM, GRU and RNN "
    "operators have no normalisation inside the recurrence, and expressing one would need "
    "a loop over time steps. Keep such a model in torch.export.")


# ------------------------------------------------------------- layout


def _reorder(weight, size: int, order: tuple):
    """Blocks of ``size`` rows of ``weight``, concatenated in ``order``."""
    blocks = [op.Slice(weight, [k * size], [(k + 1) * size], [0]) for k in order]
    return op.Concat(*blocks, axis=0)


def _one_direction(weight, size: int, order: tuple):
    """``weight`` in ONNX gate order with the leading num_directions=1 axis."""
    return op.Unsqueeze(_reorder(weight, size, order), [0])


def _zeros(rows: int, like):
    """A constant block of zero biases (a literal, so the exporter folds it away)."""
    return op.Constant(value=ir.tensor(np.zeros(rows, dtype=like.dtype.numpy())))


def _no_lengths(lengths) -> None:
    # torch.export cannot trace PackedSequence inputs (for torch.nn's RNNs neither),
    # so no exported graph passes lengths; ONNX's sequence_lens stays unused.
    if lengths is not None:
        raise ValueError("fusedrnn.onnx: PackedSequence inputs (lengths) are not supported")


def _no_toolkit(toolkit: tuple) -> None:
    # ONNX's LSTM/GRU/RNN have no zoneout, recurrent dropout or cell-state clamp (their
    # `clip` clamps the gate inputs, not the cell state).
    if any(v is not None and not (isinstance(v, float) and v == 0) for v in toolkit):
        raise ValueError("fusedrnn.onnx: the toolkit features (zoneout, recurrent_dropout, "
                         "cell_clip, grad_clip) cannot be exported to ONNX's LSTM/GRU/RNN")


def _unused_saved(input, width: int, save_for_backward: bool):
    """Stand-in for the op's saved-for-backward output (steps or 0, batch, width).

    No inference graph reads it, so the exporter's optimizer drops it; it has the
    shape and dtype the op's fake kernel gives, so the graph stays consistent."""
    batch = op.Shape(input, start=1, end=2)
    steps = op.Shape(input, start=0, end=1) if save_for_backward else op.Constant(value_ints=[0])
    zeros = op.ConstantOfShape(op.Concat(steps, batch, op.Constant(value_ints=[width]), axis=0))
    if input.dtype == ir.DataType.DOUBLE:
        return op.Cast(zeros, to=ir.DataType.DOUBLE)
    return zeros  # float32: the compute type of fp32, fp16 and bf16 layers


def _one_layer_outputs(y, y_h):
    """ONNX's (steps, 1, batch, hidden) and (1, batch, hidden) without the direction axis."""
    return op.Squeeze(y, [1]), op.Squeeze(y_h, [0])


# --------------------------------------------------------- translations


@torch_op("fusedrnn::lstm_forward", trace_only=True)
def lstm_forward(input: TFloat, w_ih: TFloat, bias: Optional[TFloat], w_hh: TFloat,
                 w_hr: Optional[TFloat], h0: TFloat, c0: TFloat, lengths: Optional[TInt],
                 reverse: bool, save_for_backward: bool = True, path: str = "auto", *toolkit):
    """``fusedrnn::lstm_forward`` as one ONNX ``LSTM`` node."""
    if w_hr is not None:
        raise ValueError(PROJ_SIZE_ERROR)
    _no_lengths(lengths)
    _no_toolkit(toolkit)
    hidden = w_ih.shape[0] // 4
    onnx_bias = None
    if bias is not None:
        wb = _reorder(bias, hidden, LSTM_GATE_ORDER)
        onnx_bias = op.Unsqueeze(op.Concat(wb, _zeros(4 * hidden, bias), axis=0), [0])
    y, y_h, y_c = op.LSTM(
        input, _one_direction(w_ih, hidden, LSTM_GATE_ORDER),
        _one_direction(w_hh, hidden, LSTM_GATE_ORDER), onnx_bias, None,
        op.Unsqueeze(h0, [0]), op.Unsqueeze(c0, [0]),
        direction="reverse" if reverse else "forward", hidden_size=hidden)
    output, h_n = _one_layer_outputs(y, y_h)
    return (output, h_n, op.Squeeze(y_c, [0]),
            _unused_saved(input, 4 * hidden, save_for_backward),
            _unused_saved(input, hidden, save_for_backward))


@torch_op("fusedrnn::gru_forward", trace_only=True)
def gru_forward(input: TFloat, w_ih: TFloat, b_ih: Optional[TFloat], w_hh: TFloat,
                b_hh: Optional[TFloat], h0: TFloat, lengths: Optional[TInt], reverse: bool,
                save_for_backward: bool = True, path: str = "auto", *toolkit):
    """``fusedrnn::gru_forward`` as one ONNX ``GRU`` node (``linear_before_reset=1``)."""
    _no_lengths(lengths)
    _no_toolkit(toolkit)
    hidden = w_ih.shape[0] // 3
    onnx_bias = None
    if b_ih is not None or b_hh is not None:
        like = b_ih if b_ih is not None else b_hh
        wb, rb = (_reorder(b, hidden, GRU_GATE_ORDER) if b is not None
                  else _zeros(3 * hidden, like) for b in (b_ih, b_hh))
        onnx_bias = op.Unsqueeze(op.Concat(wb, rb, axis=0), [0])
    y, y_h = op.GRU(
        input, _one_direction(w_ih, hidden, GRU_GATE_ORDER),
        _one_direction(w_hh, hidden, GRU_GATE_ORDER), onnx_bias, None,
        op.Unsqueeze(h0, [0]), direction="reverse" if reverse else "forward",
        hidden_size=hidden, linear_before_reset=1)
    output, h_n = _one_layer_outputs(y, y_h)
    return output, h_n, _unused_saved(input, 4 * hidden, save_for_backward)


def _rnn_forward(activation: str):
    def rnn_forward(input: TFloat, w_ih: TFloat, bias: Optional[TFloat], w_hh: TFloat,
                    h0: TFloat, lengths: Optional[TInt], reverse: bool,
                    save_for_backward: bool = True, path: str = "auto", *toolkit):
        _no_lengths(lengths)
        _no_toolkit(toolkit)
        hidden = w_ih.shape[0]
        onnx_bias = None
        if bias is not None:
            onnx_bias = op.Unsqueeze(op.Concat(bias, _zeros(hidden, bias), axis=0), [0])
        y, y_h = op.RNN(input, op.Unsqueeze(w_ih, [0]), op.Unsqueeze(w_hh, [0]), onnx_bias, None,
                        op.Unsqueeze(h0, [0]), activations=[activation],
                        direction="reverse" if reverse else "forward", hidden_size=hidden)
        output, h_n = _one_layer_outputs(y, y_h)
        return output, h_n, _unused_saved(input, hidden, save_for_backward)

    name = f"rnn_{activation.lower()}_forward"
    rnn_forward.__name__ = rnn_forward.__qualname__ = name
    rnn_forward.__doc__ = f"``fusedrnn::{name}`` as one ONNX ``RNN`` node ({activation})."
    return torch_op(f"fusedrnn::{name}", trace_only=True)(rnn_forward)


rnn_tanh_forward = _rnn_forward("Tanh")
rnn_relu_forward = _rnn_forward("Relu")

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _refuse_layer_norm(cell: str):
    def norm_forward(xproj: TFloat, *args):
        raise ValueError(LAYER_NORM_ERROR)

    norm_forward.__name__ = norm_forward.__qualname__ = f"{cell}_norm_forward"
    norm_forward.__doc__ = f"``fusedrnn::{cell}_norm_forward`` (layer_norm): refused."
    return torch_op(f"fusedrnn::{cell}_norm_forward", trace_only=True)(norm_forward)


_NORM_REFUSALS = {cell: _refuse_layer_norm(cell) for cell in CELLS}

TRANSLATIONS = {}
if ops.HAVE_EXTENSION:
    _LAYERS = {"lstm": lstm_forward, "gru": gru_forward, "rnn_tanh": rnn_tanh_forward,
               "rnn_relu": rnn_relu_forward}
    for _cell in CELLS:
        TRANSLATIONS[getattr(torch.ops.fusedrnn, f"{_cell}_forward").default] = _LAYERS[_cell]
        TRANSLATIONS[getattr(torch.ops.fusedrnn, f"{_cell}_norm_forward").default] = (
            _NORM_REFUSALS[_cell])
