"""Fake kernels and autograd for the fused ops (csrc/ops.cpp), per op namespace.

``register_fake`` gives torch.compile the output shapes; ``register_autograd``
makes each forward op's backward another fused op. The modules' eager calls
take the same setup_context and backward on a lighter autograd.Function
(``call_with_autograd``); torch.compile, tracing and torch.func go through
the registered autograd. First-order gradients run the fused backward ops.
When autograd records the backward itself (create_graph=True: gradient
penalties, Hessian-vector products, gradgradcheck), the backward is computed
instead by differentiating ``reference.py``, whose graph autograd can
differentiate again.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import reference


def register(namespace: str) -> None:
    """Fake kernels and autograd for the ops of ``namespace`` (call once)."""
    ops = getattr(torch.ops, namespace)
    for op, fake in (("lstm_forward", _lstm_forward_fake), ("lstm_backward", _lstm_backward_fake),
                     ("gru_forward", _gru_forward_fake), ("gru_backward", _gru_backward_fake),
                     ("lstm_norm_forward", _lstm_norm_forward_fake),
                     ("lstm_norm_backward", _lstm_norm_backward_fake),
                     ("gru_norm_forward", _gru_norm_forward_fake),
                     ("gru_norm_backward", _gru_norm_backward_fake)):
        torch.library.register_fake(f"{namespace}::{op}", fake)
    for op, backward, setup in (("lstm_forward", _lstm_backward, _lstm_setup_context),
                                ("gru_forward", _gru_backward, _gru_setup_context),
                                ("lstm_norm_forward", _lstm_norm_backward,
                                 _lstm_norm_setup_context),
                                ("gru_norm_forward", _gru_norm_backward,
                                 _gru_norm_setup_context)):
        backward_of_ops = functools.partial(backward, ops)
        torch.library.register_autograd(f"{namespace}::{op}", backward_of_ops,
                                        setup_context=setup)
        forward_op = getattr(ops, op)
        _EAGER_AUTOGRAD[forward_op] = _Autograd(forward_op, setup, backward_of_ops)
    # Called directly and differentiated, the backward ops raise, never a silent zero.
    for op in ("lstm_backward", "gru_backward", "lstm_norm_backward", "gru_norm_backward"):
        torch.library.register_autograd(f"{namespace}::{op}", _backward_op_has_no_backward,
                                        setup_context=_save_nothing)


# ------------------------------------------------------ fake kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _grad_input_like(x: Tensor, grad_input: bool) -> Tensor:
    return x.new_empty(x.shape) if grad_input else x.new_empty(0)


def _lstm_forward_fake(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse,
                       save_for_backward=True, persistent=False, *toolkit):
    steps, batch, _ = x.shape
    gates, h_size = w_ih.shape[0], w_hh.shape[1]
    hidden = gates // 4
    ct = _compute_dtype(x.dtype)
    saved = steps if save_for_backward else 0
    return (x.new_empty(steps, batch, h_size), x.new_empty(batch, h_size),
            x.new_empty(batch, hidden), x.new_empty(saved, batch, gates, dtype=ct),
            x.new_empty(saved, batch, hidden, dtype=ct))


def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, output,
                        gates, cells, lengths, reverse, grad_input=True, persistent=False,
                        *toolkit):
    grad_w_hr = w_hh.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0)
    return (_grad_input_like(x, grad_input), w_ih.new_empty(w_ih.shape),
            w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape), grad_w_hr,
            h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def _gru_forward_fake(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse,
                      save_for_backward=True, persistent=False, *toolkit):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 3
    ct = _compute_dtype(x.dtype)
    saved = steps if save_for_backward else 0
    return (x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden),
            x.new_empty(saved, batch, 4 * hidden, dtype=ct))


def _gru_backward_fake(grad_output, grad_h_n, x, w_ih, w_hh, h0, output, gates, lengths,
                       reverse, grad_input=True, persistent=False, *toolkit):
    gates3 = w_ih.shape[0]
    return (_grad_input_like(x, grad_input), w_ih.new_empty(w_ih.shape),
            w_ih.new_empty(gates3), w_hh.new_empty(w_hh.shape), w_hh.new_empty(gates3),
            h0.new_empty(h0.shape))


def _lstm_norm_forward_fake(xproj, w_hh, hh_weight, hh_bias, c_weight, c_bias, h0, c0, lengths,
                            reverse, save_for_backward=True, *toolkit):
    steps, batch, gates = xproj.shape
    hidden = gates // 4
    ct = _compute_dtype(xproj.dtype)
    saved = steps if save_for_backward else 0
    return (xproj.new_empty(steps, batch, hidden), xproj.new_empty(batch, hidden),
            xproj.new_empty(batch, hidden), xproj.new_empty(saved, batch, gates, dtype=ct),
            xproj.new_empty(saved, batch, hidden, dtype=ct),
            xproj.new_empty(saved, batch, gates, dtype=ct),
            xproj.new_empty(saved, batch, hidden, dtype=ct),
            xproj.new_empty(saved, batch, 2, dtype=ct))


def _lstm_norm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, hh_weight, c_weight, c_bias,
                             h0, c0, output, gates, cells, hh_norm, c_norm, rstd, lengths,
                             reverse, *toolkit):
    steps, batch, hidden = output.shape
    return (output.new_empty(steps, batch, 4 * hidden), w_hh.new_empty(w_hh.shape),
            hh_weight.new_empty(hh_weight.shape), hh_weight.new_empty(hh_weight.shape),
            c_weight.new_empty(c_weight.shape), c_weight.new_empty(c_weight.shape),
            h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def _gru_norm_forward_fake(xproj, w_hh, b_hh, hh_weight, hh_bias, h0, lengths, reverse,
                           save_for_backward=True, *toolkit):
    steps, batch, gates3 = xproj.shape
    hidden = gates3 // 3
    ct = _compute_dtype(xproj.dtype)
    saved = steps if save_for_backward else 0
    return (xproj.new_empty(steps, batch, hidden), xproj.new_empty(batch, hidden),
            xproj.new_empty(saved, batch, 4 * hidden, dtype=ct),
            xproj.new_empty(saved, batch, gates3, dtype=ct),
            xproj.new_empty(saved, batch, dtype=ct))


def _gru_norm_backward_fake(grad_output, grad_h_n, w_hh, hh_weight, h0, output, gates, hh_norm,
                            rstd, lengths, reverse, *toolkit):
    steps, batch, hidden = output.shape
    return (output.new_empty(steps, batch, 3 * hidden), w_hh.new_empty(w_hh.shape),
            hh_weight.new_empty(hh_weight.shape), hh_weight.new_empty(hh_weight.shape),
            hh_weight.new_empty(hh_weight.shape), h0.new_empty(h0.shape))


# ----------------------------------------------------------- autograd


class _Autograd(NamedTuple):
    """A forward op with its autograd: what register_autograd is given."""

    op: object
    setup_context: Callable
    backward: Callable


# Filled by register(): each forward op's _Autograd, by op (torch.ops.<namespace>.<name>).
_EAGER_AUTOGRAD: dict = {}


class _EagerAutograd(torch.autograd.Function):
    """A forward op called eagerly, with the setup_context and backward of its
    register_autograd on a plain autograd.Function. register_autograd's own
    Function binds the arguments to the op's signature on every call: about
    75 us of Python, three times a streaming step's op. The _Autograd comes
    last, so that ``ctx.needs_input_grad`` indexes the op's inputs."""

    @staticmethod
    def forward(ctx, *args):
        *inputs, autograd = args
        output = call_below_autograd(autograd.op, *inputs)
        autograd.setup_context(ctx, inputs, output)
        ctx.backward_of_op = autograd.backward
        return output

    @staticmethod
    def backward(ctx, *grads):
        return ctx.backward_of_op(ctx, *grads) + (None,)


def call_with_autograd(op, *args):
    """``op(*args)``, recording its backward. Eagerly on :class:`_EagerAutograd`;
    under torch.compile, torch.jit tracing or a torch.func transform through the
    op's own autograd (register_autograd), which they understand."""
    autograd = _EAGER_AUTOGRAD.get(op)
    if (autograd is None or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()):
        return op(*args)
    return _EagerAutograd.apply(*args, autograd)


def call_below_autograd(op, *args):
    """``op(*args)`` past the op's autograd kernel (register_autograd's, in Python:
    several microseconds a call), for a call autograd records nothing of. Under
    torch.compile the op is traced as it is."""
    if torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


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


# The toolkit arguments (fusedrnn/features.py) after ``persistent``, in schema order.
_LSTM_TOOLKIT = ("recurrent_mask", "zoneout_h", "zoneout_c", "cell_clip", "grad_clip")
_GRU_TOOLKIT = ("recurrent_mask", "zoneout_h", "grad_clip")


def _save_toolkit(ctx, names: tuple, values: tuple) -> None:
    """Keeps the toolkit arguments for the backward: the masks as saved tensors (set on
    ctx after save_for_backward), the limits as floats."""
    values = dict(zip(names, values))
    ctx.toolkit_limits = {n: v for n, v in values.items() if not isinstance(v, Tensor | None)}
    ctx.toolkit_masks = [n for n, v in values.items() if isinstance(v, Tensor | None)]
    return [values[n] for n in ctx.toolkit_masks]


def _toolkit_of(ctx, masks) -> dict:
    """The toolkit arguments saved by :func:`_save_toolkit`, by name."""
    return {**dict(zip(ctx.toolkit_masks, masks)), **ctx.toolkit_limits}


def _refuse_second_order_grad_clip(toolkit: dict) -> None:
    """Second-order gradients through grad_clip disagreed with finite differences of the
    clipped first-order gradient in our checks: refused rather than returned doubtful."""
    if toolkit.get("grad_clip"):
        raise RuntimeError("fusedrnn: second-order gradients (create_graph=True) with "
                           "grad_clip are not supported")


def _reference_toolkit(toolkit: dict) -> dict:
    """The reference's keywords: a limit of 0 is off (None)."""
    return {n: (None if v is not None and not isinstance(v, Tensor) and v == 0 else v)
            for n, v in toolkit.items()}


def _lstm_setup_context(ctx, inputs, output):
    x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse, _save, persistent, *toolkit = inputs
    out, h_n, c_n, gates, cells = output
    masks = _save_toolkit(ctx, _LSTM_TOOLKIT[:len(toolkit)], tuple(toolkit))
    ctx.save_for_backward(x, w_ih, bias, w_hh, w_hr, h0, c0, out, gates, cells, lengths, *masks)
    ctx.reverse = reverse
    ctx.persistent = persistent
    ctx.unused = (None,) * (4 + len(toolkit))  # no gradient from lengths onwards
    ctx.mark_non_differentiable(gates, cells)
    ctx.set_materialize_grads(False)  # never a zero gradient the size of gates


def _lstm_backward(ops, ctx, grad_out, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    x, w_ih, bias, w_hh, w_hr, h0, c0, out, gates, cells, lengths, *masks = ctx.saved_tensors
    toolkit = _toolkit_of(ctx, masks)
    if torch.is_grad_enabled():
        _refuse_second_order_grad_clip(toolkit)
        layer = functools.partial(reference.lstm_layer, **_reference_toolkit(toolkit))
        return _differentiable_backward(layer, (x, w_ih, bias, w_hh, w_hr, h0, c0),
                                        ctx.needs_input_grad[:7], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n, grad_c_n)) + ctx.unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_bias, grad_w_hh, grad_w_hr, grad_h0, grad_c0 = (
        call_below_autograd(
            ops.lstm_backward, _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0),
            _zeros_if_none(grad_c_n, c0), x, w_ih, w_hh, w_hr, h0, c0, out, gates, cells, lengths,
            ctx.reverse, ctx.needs_input_grad[0], ctx.persistent,
            *(toolkit[n] for n in _LSTM_TOOLKIT if n in toolkit)))
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w_ih,
            grad_bias if bias is not None else None, grad_w_hh,
            grad_w_hr if w_hr is not None else None, grad_h0, grad_c0) + ctx.unused


def _gru_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, _save, persistent, *toolkit = inputs
    out, h_n, gates = output
    masks = _save_toolkit(ctx, _GRU_TOOLKIT[:len(toolkit)], tuple(toolkit))
    ctx.save_for_backward(x, w_ih, b_ih, w_hh, b_hh, h0, out, gates, lengths, *masks)
    ctx.reverse = reverse
    ctx.persistent = persistent
    ctx.unused = (None,) * (4 + len(toolkit))  # no gradient from lengths onwards
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)


def _gru_backward(ops, ctx, grad_out, grad_h_n, _grad_gates):
    x, w_ih, b_ih, w_hh, b_hh, h0, out, gates, lengths, *masks = ctx.saved_tensors
    toolkit = _toolkit_of(ctx, masks)
    if torch.is_grad_enabled():
        _refuse_second_order_grad_clip(toolkit)
        layer = functools.partial(reference.gru_layer, **_reference_toolkit(toolkit))
        return _differentiable_backward(layer, (x, w_ih, b_ih, w_hh, b_hh, h0),
                                        ctx.needs_input_grad[:6], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n)) + ctx.unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_b_ih, grad_w_hh, grad_b_hh, grad_h0 = call_below_autograd(
        ops.gru_backward, _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0), x, w_ih,
        w_hh, h0, out, gates, lengths, ctx.reverse, ctx.needs_input_grad[0], ctx.persistent,
        *(toolkit[n] for n in _GRU_TOOLKIT if n in toolkit))
    return (grad_x if ctx.needs_input_grad[0] else None, grad_w_ih,
            grad_b_ih if b_ih is not None else None, grad_w_hh,
            grad_b_hh if b_hh is not None else None, grad_h0) + ctx.unused


# The layer_norm ops (csrc/ops.cpp): their backward returns the gradients of
# the differentiable inputs in input order; their reference twins are
# reference.*_norm_recurrence.


def _lstm_norm_setup_context(ctx, inputs, output):
    *differentiable, lengths, reverse, _save = inputs[:11]
    toolkit = inputs[11:]
    out, _, _, *saved = output
    masks = _save_toolkit(ctx, _LSTM_TOOLKIT[:len(toolkit)], tuple(toolkit))
    ctx.save_for_backward(*differentiable, out, *saved, lengths, *masks)
    ctx.reverse = reverse
    ctx.unused = (None,) * (3 + len(toolkit))  # no gradient from lengths onwards
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)


def _lstm_norm_backward(ops, ctx, grad_out, grad_h_n, grad_c_n, *_grad_saved):
    _xproj, w_hh, hh_w, _hh_b, c_w, c_b, h0, c0, out, *saved, lengths = ctx.saved_tensors[:15]
    toolkit = _toolkit_of(ctx, ctx.saved_tensors[15:])
    if torch.is_grad_enabled():
        _refuse_second_order_grad_clip(toolkit)
        layer = functools.partial(reference.lstm_norm_recurrence, **_reference_toolkit(toolkit))
        return _differentiable_backward(layer, ctx.saved_tensors[:8], ctx.needs_input_grad[:8],
                                        (lengths, ctx.reverse),
                                        (grad_out, grad_h_n, grad_c_n)) + ctx.unused
    _check_saved(saved[0], out)
    grads = call_below_autograd(
        ops.lstm_norm_backward, _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0),
        _zeros_if_none(grad_c_n, c0), w_hh, hh_w, c_w, c_b, h0, c0, out, *saved, lengths,
        ctx.reverse, *(toolkit[n] for n in _LSTM_TOOLKIT if n in toolkit))
    return tuple(grads) + ctx.unused


def _gru_norm_setup_context(ctx, inputs, output):
    *differentiable, lengths, reverse, _save = inputs[:9]
    toolkit = inputs[9:]
    out, _, *saved = output
    masks = _save_toolkit(ctx, _GRU_TOOLKIT[:len(toolkit)], tuple(toolkit))
    ctx.save_for_backward(*differentiable, out, *saved, lengths, *masks)
    ctx.reverse = reverse
    ctx.unused = (None,) * (3 + len(toolkit))
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)


def _gru_norm_backward(ops, ctx, grad_out, grad_h_n, *_grad_saved):
    _xproj, w_hh, b_hh, hh_w, _hh_b, h0, out, *saved, lengths = ctx.saved_tensors[:11]
    toolkit = _toolkit_of(ctx, ctx.saved_tensors[11:])
    if torch.is_grad_enabled():
        _refuse_second_order_grad_clip(toolkit)
        layer = functools.partial(reference.gru_norm_recurrence, **_reference_toolkit(toolkit))
        return _differentiable_backward(layer, ctx.saved_tensors[:6], ctx.needs_input_grad[:6],
                                        (lengths, ctx.reverse), (grad_out, grad_h_n)) + ctx.unused
    _check_saved(saved[0], out)
    grad_x, grad_w_hh, grad_b_hh, grad_hh_w, grad_hh_b, grad_h0 = call_below_autograd(
        ops.gru_norm_backward, _zeros_if_none(grad_out, out), _zeros_if_none(grad_h_n, h0), w_hh,
        hh_w, h0, out, *saved, lengths, ctx.reverse,
        *(toolkit[n] for n in _GRU_TOOLKIT if n in toolkit))
    return (grad_x, grad_w_hh, grad_b_hh if b_hh is not None else None, grad_hh_w,
            grad_hh_b, grad_h0) + ctx.unused


def _backward_op_has_no_backward(ctx, *grads):
    raise RuntimeError(
        "fusedrnn: the backward ops are not differentiable themselves; second-order gradients "
        "of the modules go through fusedrnn.reference (autograd does this when the backward "
        "runs with create_graph=True)")


def _save_nothing(ctx, inputs, output):
    pass
