"""The fused ops: thin wrappers, fake kernels and autograd.

``torch.ops.fusedrnn.*`` are defined in C++ (csrc/ops.cpp) with CPU and
CUDA kernels. Here they get ``register_fake`` (shapes for torch.compile)
and ``register_autograd`` (their backward is another fused op; a
differentiable backward through ``reference.py`` when a second-order
gradient is asked for), so a model built on them traces with
``torch.compile(fullgraph=True)``.

``lstm_layer`` / ``gru_layer`` are what the modules call: one layer, one
direction. Without the compiled extension they run ``reference.py``.

The kernel path (standard step loop or the persistent CUDA kernels) is an
argument of the ops, decided here, in :func:`use_persistent`.
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


# ------------------------------------------------------------ kernel path

_PERSISTENT_MODES = ("auto", "on", "off")
_persistent_mode = {"1": "on", "0": "off"}.get(os.environ.get("FUSEDRNN_PERSISTENT", ""), "auto")


def set_persistent(mode: str) -> None:
    """Choose the CUDA kernel path: ``"on"`` runs the persistent whole-sequence
    kernels where they fit, ``"off"`` the standard step loop, ``"auto"`` the
    default rule. The environment variable ``FUSEDRNN_PERSISTENT=1|0`` sets the
    starting value."""
    global _persistent_mode
    if mode not in _PERSISTENT_MODES:
        raise ValueError(f"fusedrnn.ops.set_persistent: mode must be one of {_PERSISTENT_MODES}, "
                         f"got {mode!r}")
    _persistent_mode = mode


def use_persistent(x: Tensor) -> bool:
    """Whether a layer on ``x`` (time-major) runs the whole-sequence path.

    On the CPU ``auto`` takes the persistent loop for sequences of two steps
    or more (measured faster than the step loop: README, Speed); a single
    step (streaming) is cheaper on the step loop, which packs no weights. On
    CUDA ``auto`` keeps the standard kernels: the persistent ones have not been
    timed on a GPU yet, so no measured rule picks them."""
    if x.is_cuda:
        return _persistent_mode == "on"
    if _persistent_mode == "auto":
        return x.shape[0] > 1
    return _persistent_mode == "on"


# --------------------------------------------------------------- autocast


def autocast_dtype(x: Tensor, casts_fp32: bool) -> torch.dtype | None:
    """The dtype a layer computes in under ``torch.autocast``, as torch.nn's does:
    the autocast dtype for an input already in it, or for an fp32 input where
    torch.nn's own kernel is on autocast's lower-precision list (``casts_fp32``:
    the LSTM module on the CPU (oneDNN), LSTM and GRU on CUDA (cuDNN)); else
    None, no cast. The ops themselves never autocast inside."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    if x.dtype == dtype or (casts_fp32 and x.dtype == torch.float32):
        return dtype
    return None


# ----------------------------------------------------------------- layers


def lstm_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
               h0: Tensor, c0: Tensor, lengths: Tensor | None = None, reverse: bool = False):
    """One LSTM layer, one direction: ``(output, h_n, c_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, x)
    if not use_extension():
        return reference.lstm_layer(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse)
    save = _needs_backward(x, w_ih, bias, w_hh, w_hr, h0, c0)
    out, h_n, c_n, _, _ = torch.ops.fusedrnn.lstm_forward(x, w_ih, bias, w_hh, w_hr, h0, c0,
                                                          lengths, reverse, save,
                                                          use_persistent(x))
    return out, h_n, c_n


def gru_layer(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, b_hh: Tensor | None,
              h0: Tensor, lengths: Tensor | None = None, reverse: bool = False):
    """One GRU layer, one direction: ``(output, h_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, x)
    if not use_extension():
        return reference.gru_layer(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse)
    save = _needs_backward(x, w_ih, b_ih, w_hh, b_hh, h0)
    out, h_n, _ = torch.ops.fusedrnn.gru_forward(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse,
                                                 save, use_persistent(x))
    return out, h_n


def _needs_backward(*tensors) -> bool:
    """Whether autograd will call the backward: else the forward saves nothing."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _prepare_lengths(lengths: Tensor | None, x: Tensor) -> Tensor | None:
    """Check ``lengths`` (values too, when they are on the CPU) and move them to the input."""
    if lengths is None:
        return None
    steps, batch = x.shape[0], x.shape[1]
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"fusedrnn: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"fusedrnn: lengths must be an integer tensor, got {lengths.dtype}")
    if lengths.device.type == "cpu" and not torch.compiler.is_compiling() and batch > 0:
        longest, shortest = int(lengths.max()), int(lengths.min())
        if longest > steps or shortest < 0:
            raise ValueError(f"fusedrnn: lengths must lie in [0, {steps}] (the sequence length), "
                             f"got values from {shortest} to {longest}")
    return lengths.to(device=x.device, dtype=torch.int64)


# ------------------------------------------------------ fake kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _grad_input_like(x: Tensor, grad_input: bool) -> Tensor:
    return x.new_empty(x.shape) if grad_input else x.new_empty(0)


if HAVE_EXTENSION:

    @torch.library.register_fake("fusedrnn::lstm_forward")
    def _lstm_forward_fake(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse,
                           save_for_backward=True, persistent=False):
        steps, batch, _ = x.shape
        gates, h_size = w_ih.shape[0], w_hh.shape[1]
        hidden = gates // 4
        ct = _compute_dtype(x.dtype)
        saved = steps if save_for_backward else 0
        return (x.new_empty(steps, batch, h_size), x.new_empty(batch, h_size),
                x.new_empty(batch, hidden), x.new_empty(saved, batch, gates, dtype=ct),
                x.new_empty(saved, batch, hidden, dtype=ct))

    @torch.library.register_fake("fusedrnn::lstm_backward")
    def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, output,
                            gates, cells, lengths, reverse, grad_input=True, persistent=False):
        grad_w_hr = w_hh.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0)
        return (_grad_input_like(x, grad_input), w_ih.new_empty(w_ih.shape),
                w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape), grad_w_hr,
                h0.new_empty(h0.shape), c0.new_empty(c0.shape))

    @torch.library.register_fake("fusedrnn::gru_forward")
    def _gru_forward_fake(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse,
                          save_for_backward=True, persistent=False):
        steps, batch, _ = x.shape
        hidden = w_ih.shape[0] // 3
        ct = _compute_dtype(x.dtype)
        saved = steps if save_for_backward else 0
        return (x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden),
                x.new_empty(saved, batch, 4 * hidden, dtype=ct))

    @torch.library.register_fake("fusedrnn::gru_backward")
    def _gru_backward_fake(grad_output, grad_h_n, x, w_ih, w_hh, h0, output, gates, lengths,
                           reverse, grad_input=True, persistent=False):
        gates3 = w_ih.shape[0]
        return (_grad_input_like(x, grad_input), w_ih.new_empty(w_ih.shape),
                w_ih.new_empty(gates3), w_hh.new_empty(w_hh.shape), w_hh.new_empty(gates3),
                h0.new_empty(h0.shape))


# ----------------------------------------------------------- autograd
#
# First-order gradients run the fused backward ops. When autograd records the
# backward itself (create_graph=True: gradient penalties, Hessian-vector
# products, gradgradcheck), the backward is computed instead by
# differentiating reference.py, whose graph autograd can differentiate again.


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _check_saved(gates: Tensor, out: Tensor) -> None:
    if gates.shape[0] != out.shape[0]:
        raise RuntimeError("fusedrnn: backward through a forward op called with "
                           "save_for_backward=False; call it with True to train")


def _differentiable_backward(layer, inputs, needs_grad, layer_args, grads):
    """Gradients of ``layer(*inputs, *layer_args)`` (the reference twin of an op)
    for the inputs in ``needs_grad``, recorded by autograd so that they can be
    differentiated again."""
    wanted = [t for t, need in zip(inputs, needs_grad) if need]
    with torch.enable_grad():
        results = layer(*inputs, *layer_args)
    grads = [_zeros_if_none(g, r) for g, r in zip(grads, results)]
    found = iter(torch.autograd.grad(results, wanted, grads, create_graph=True,
                                     allow_unused=True))
    out = []
    for t, need in zip(inputs, needs_grad):
        g = next(found) if need else None
        out.append(torch.zeros_like(t) if need and g is None else g)
    return tuple(out)


def _lstm_setup_context(ctx, inputs, output):
    x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse, _save, persistent = inputs
    out, h_n, c_n, gates, cells = output
    ctx.save_for_backward(x, w_ih, bias, w_hh, w_hr, h0, c0, out, gates, cells, lengths)
    ctx.reverse = reverse
    ctx.persistent = persistent
    ctx.mark_non_differentiable(gates, cells)


def _lstm_backward(ctx, grad_out, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    x, w_ih, bias, w_hh, w_hr, h0, c0, out, gates, cells, lengths = ctx.saved_tensors
    unused = (None,) * 4  # lengths, reverse, save_for_backward, persistent
    if torch.is_grad_enabled():
        return _differentiable_backward(reference.lstm_layer, (x, w_ih, bias, w_hh, w_hr, h0, c0),
                                        ctx.needs_input_grad[:7], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n, grad_c_n)) + unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_bias, grad_w_hh, grad_w_hr, grad_h0, grad_c0 = (
        torch.ops.fusedrnn.lstm_backward(
            _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0),
            _zeros_if_none(grad_c_n, c0), x, w_ih, w_hh, w_hr, h0, c0, out, gates, cells, lengths,
            ctx.reverse, ctx.needs_input_grad[0], ctx.persistent))
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w_ih,
            grad_bias if bias is not None else None, grad_w_hh,
            grad_w_hr if w_hr is not None else None, grad_h0, grad_c0) + unused


def _gru_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, _save, persistent = inputs
    out, h_n, gates = output
    ctx.save_for_backward(x, w_ih, b_ih, w_hh, b_hh, h0, out, gates, lengths)
    ctx.reverse = reverse
    ctx.persistent = persistent
    ctx.mark_non_differentiable(gates)


def _gru_backward(ctx, grad_out, grad_h_n, _grad_gates):
    x, w_ih, b_ih, w_hh, b_hh, h0, out, gates, lengths = ctx.saved_tensors
    unused = (None,) * 4  # lengths, reverse, save_for_backward, persistent
    if torch.is_grad_enabled():
        return _differentiable_backward(reference.gru_layer, (x, w_ih, b_ih, w_hh, b_hh, h0),
                                        ctx.needs_input_grad[:6], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n)) + unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_b_ih, grad_w_hh, grad_b_hh, grad_h0 = torch.ops.fusedrnn.gru_backward(
        _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0), x, w_ih, w_hh, h0, out,
        gates, lengths, ctx.reverse, ctx.needs_input_grad[0], ctx.persistent)
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w_ih,
            grad_b_ih if b_ih is not None else None, grad_w_hh,
            grad_b_hh if b_hh is not None else None, grad_h0) + unused


def _backward_op_has_no_backward(ctx, *grads):
    raise RuntimeError(
        "fusedrnn: the backward ops are not differentiable themselves; second-order gradients "
        "of the modules go through fusedrnn.reference (autograd does this when the backward "
        "runs with create_graph=True)")


def _save_nothing(ctx, inputs, output):
    pass


if HAVE_EXTENSION:
    torch.library.register_autograd("fusedrnn::lstm_forward", _lstm_backward,
                                    setup_context=_lstm_setup_context)
    torch.library.register_autograd("fusedrnn::gru_forward", _gru_backward,
                                    setup_context=_gru_setup_context)
    # Called directly and differentiated, the backward ops raise, never a silent zero.
    for _name in ("fusedrnn::lstm_backward", "fusedrnn::gru_backward"):
        torch.library.register_autograd(_name, _backward_op_has_no_backward,
                                        setup_context=_save_nothing)
