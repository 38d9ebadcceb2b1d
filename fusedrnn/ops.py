"""The fused ops: thin wrappers, fake kernels and autograd.

``torch.ops.fusedrnn.*`` are defined in C++ (csrc/ops.cpp) with CPU and
CUDA kernels. Here they get ``register_fake`` (shapes for torch.compile)
and ``register_autograd`` (their backward is another fused op), so a model
built on them traces with ``torch.compile(fullgraph=True)``.

``lstm_layer`` / ``gru_layer`` are what the modules call: one layer, one
direction. Without the compiled extension they run ``reference.py``.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from . import reference

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.fusedrnn)

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # the extension was not built
    _LOAD_ERROR = exc

HAVE_EXTENSION = _LOAD_ERROR is None
_FORCED_REFERENCE = os.environ.get("FUSEDRNN_BACKEND", "") == "reference"

if not HAVE_EXTENSION:
    warnings.warn(
        "fusedrnn: the compiled extension fusedrnn._C could not be loaded "
        f"({_LOAD_ERROR}); running the pure-Python reference, which is slow. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def use_extension() -> bool:
    return HAVE_EXTENSION and not _FORCED_REFERENCE


def backend() -> str:
    """Which path the modules run: ``"fused"`` (the C++/CUDA ops) or ``"reference"``."""
    return "fused" if use_extension() else "reference"


def build_info() -> str:
    """What the compiled extension contains, e.g. ``"cpu:avx2 cuda:13000"``."""
    if not HAVE_EXTENSION:
        return f"not built ({_LOAD_ERROR})"
    return torch.ops.fusedrnn.build_info()


# ----------------------------------------------------------------- layers


def lstm_layer(xproj: Tensor, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor, c0: Tensor,
               lengths: Tensor | None = None, reverse: bool = False):
    """One LSTM layer, one direction: ``(output, h_n, c_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, xproj)
    if not use_extension():
        return reference.lstm_layer(xproj, w_hh, w_hr, h0, c0, lengths, reverse)
    save = _needs_backward(xproj, w_hh, w_hr, h0, c0)
    out, h_n, c_n, _, _ = torch.ops.fusedrnn.lstm_forward(xproj, w_hh, w_hr, h0, c0, lengths,
                                                          reverse, save)
    return out, h_n, c_n


def gru_layer(xproj: Tensor, w_hh: Tensor, b_hh: Tensor | None, h0: Tensor,
              lengths: Tensor | None = None, reverse: bool = False):
    """One GRU layer, one direction: ``(output, h_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, xproj)
    if not use_extension():
        return reference.gru_layer(xproj, w_hh, b_hh, h0, lengths, reverse)
    save = _needs_backward(xproj, w_hh, b_hh, h0)
    out, h_n, _ = torch.ops.fusedrnn.gru_forward(xproj, w_hh, b_hh, h0, lengths, reverse, save)
    return out, h_n


def _needs_backward(*tensors) -> bool:
    """Whether autograd will call the backward: else the forward saves nothing."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _prepare_lengths(lengths: Tensor | None, xproj: Tensor) -> Tensor | None:
    """Check ``lengths`` (values too, when they are on the CPU) and move them to the input."""
    if lengths is None:
        return None
    steps, batch = xproj.shape[0], xproj.shape[1]
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"fusedrnn: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"fusedrnn: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling() and batch > 0:
        longest, shortest = int(lengths.max()), int(lengths.min())
        if longest > steps or shortest < 0:
            raise ValueError(f"fusedrnn: lengths must lie in [0, {steps}] (the sequence length), "
                             f"got values from {shortest} to {longest}")
    return lengths.to(device=xproj.device, dtype=torch.int64)


# ------------------------------------------------------ fake kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


if HAVE_EXTENSION:

    @torch.library.register_fake("fusedrnn::lstm_forward")
    def _lstm_forward_fake(xproj, w_hh, w_hr, h0, c0, lengths, reverse, save_for_backward=True):
        steps, batch, gates = xproj.shape
        hidden, width = gates // 4, w_hh.shape[1]
        ct = _compute_dtype(xproj.dtype)
        saved = steps if save_for_backward else 0
        return (xproj.new_empty(steps, batch, width), xproj.new_empty(batch, width),
                xproj.new_empty(batch, hidden), xproj.new_empty(saved, batch, gates, dtype=ct),
                xproj.new_empty(saved, batch, hidden, dtype=ct))

    @torch.library.register_fake("fusedrnn::lstm_backward")
    def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, output, gates,
                            cells, lengths, reverse):
        steps, batch, n_gates = gates.shape
        width, hidden = w_hh.shape[1], cells.shape[2]
        grad_w_hr = w_hh.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0)
        return (w_hh.new_empty(steps, batch, n_gates), w_hh.new_empty(w_hh.shape), grad_w_hr,
                w_hh.new_empty(batch, width), w_hh.new_empty(batch, hidden))

    @torch.library.register_fake("fusedrnn::gru_forward")
    def _gru_forward_fake(xproj, w_hh, b_hh, h0, lengths, reverse, save_for_backward=True):
        steps, batch, gates = xproj.shape
        hidden = gates // 3
        ct = _compute_dtype(xproj.dtype)
        saved = steps if save_for_backward else 0
        return (xproj.new_empty(steps, batch, hidden), xproj.new_empty(batch, hidden),
                xproj.new_empty(saved, batch, 4 * hidden, dtype=ct))

    @torch.library.register_fake("fusedrnn::gru_backward")
    def _gru_backward_fake(grad_output, grad_h_n, w_hh, h0, output, gates, lengths, reverse):
        steps, batch, _ = gates.shape
        hidden = w_hh.shape[1]
        return (w_hh.new_empty(steps, batch, 3 * hidden), w_hh.new_empty(w_hh.shape),
                w_hh.new_empty(3 * hidden), w_hh.new_empty(batch, hidden))


# ----------------------------------------------------------- autograd


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _lstm_setup_context(ctx, inputs, output):
    _, w_hh, w_hr, h0, c0, lengths, reverse, *_ = inputs
    out, h_n, c_n, gates, cells = output
    ctx.save_for_backward(w_hh, w_hr, h0, c0, out, gates, cells, lengths)
    ctx.reverse = reverse
    ctx.mark_non_differentiable(gates, cells)


def _check_saved(gates: Tensor, out: Tensor) -> None:
    if gates.shape[0] != out.shape[0]:
        raise RuntimeError("fusedrnn: backward through a forward op called with "
                           "save_for_backward=False; call it with True to train")


def _lstm_backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    w_hh, w_hr, h0, c0, out, gates, cells, lengths = ctx.saved_tensors
    _check_saved(gates, out)
    grad_x, grad_w_hh, grad_w_hr, grad_h0, grad_c0 = torch.ops.fusedrnn.lstm_backward(
        _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0), _zeros_if_none(grad_c_n, c0),
        w_hh, w_hr, h0, c0, out, gates, cells, lengths, ctx.reverse)
    return (grad_x, grad_w_hh, grad_w_hr if w_hr is not None else None, grad_h0, grad_c0, None,
            None, None)


def _gru_setup_context(ctx, inputs, output):
    _, w_hh, b_hh, h0, lengths, reverse, *_ = inputs
    out, h_n, gates = output
    ctx.save_for_backward(w_hh, h0, out, gates, lengths)
    ctx.reverse = reverse
    ctx.has_b_hh = b_hh is not None
    ctx.mark_non_differentiable(gates)


def _gru_backward(ctx, grad_out, grad_h_n, _grad_gates):
    w_hh, h0, out, gates, lengths = ctx.saved_tensors
    _check_saved(gates, out)
    grad_x, grad_w_hh, grad_b_hh, grad_h0 = torch.ops.fusedrnn.gru_backward(
        _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0), w_hh, h0, out, gates,
        lengths, ctx.reverse)
    return grad_x, grad_w_hh, grad_b_hh if ctx.has_b_hh else None, grad_h0, None, None, None


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fusedrnn: second-order gradients are not supported (the backward ops have no "
        "backward). Use torch.nn.LSTM/GRU, or fusedrnn.reference, for double backward.")


def _save_nothing(ctx, inputs, output):
    pass


if HAVE_EXTENSION:
    torch.library.register_autograd("fusedrnn::lstm_forward", _lstm_backward,
                                    setup_context=_lstm_setup_context)
    torch.library.register_autograd("fusedrnn::gru_forward", _gru_backward,
                                    setup_context=_gru_setup_context)
    # The backward ops differentiate into an error, never into a silent zero.
    for _name in ("fusedrnn::lstm_backward", "fusedrnn::gru_backward"):
        torch.library.register_autograd(_name, _no_double_backward, setup_context=_save_nothing)
