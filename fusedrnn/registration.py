"""Fake kernels and autograd for the fused ops (csrc/ops.cpp), per op namespace.

``register_fake`` gives torch.compile the output shapes; ``register_autograd``
makes each forward op's backward another fused op. Eager calls and torch.func
transforms take the same setup_context and backward on a lighter
autograd.Function with a jvp (``call_with_autograd``); torch.compile and
torch.jit tracing go through the registered autograd. First-order gradients
run the fused backward ops. When the backward must itself be differentiable
(create_graph=True: gradient penalties, Hessian-vector products,
gradgradcheck; or a forward-mode level or torch.func transform around it) it
is computed instead by differentiating ``reference.py``, and so are
forward-mode tangents: its plain torch ops compose with every transform.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.autograd import forward_ad

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
        _EAGER_AUTOGRAD[forward_op] = _Autograd(forward_op, setup, backward_of_ops, _SPECS[op])
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


class OpSpec(NamedTuple):
    """The shape of a forward op's signature, as the generic autograd code reads it."""

    differentiable: int  # its leading inputs, which take gradients and tangents
    results: int  # its leading outputs, the layer's results
    saved: int  # the outputs after them, saved for the backward (no tangents)
    toolkit_at: int  # where its trailing toolkit arguments start
    toolkit: tuple  # their names, in schema order (fusedrnn/features.py)
    # Its twin in reference.py: (*differentiable, lengths, reverse, **toolkit) -> results.
    reference: Callable


class _Autograd(NamedTuple):
    """A forward op with its autograd: what register_autograd is given, and its spec."""

    op: object
    setup_context: Callable
    backward: Callable
    spec: OpSpec


# Filled by register(): each forward op's _Autograd, by op (torch.ops.<namespace>.<name>).
_EAGER_AUTOGRAD: dict = {}


def transforms_active() -> bool:
    """Whether a forward-mode AD level (``torch.autograd.forward_ad``) or a torch.func
    transform is active. A call must then run through autograd even when nothing
    requires grad, and a backward must stay differentiable: a call below autograd
    would drop the tangents silently."""
    return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


class _OpFunction(torch.autograd.Function):
    """A forward op under a torch.func transform, with the setup_context and backward
    of its register_autograd and a jvp (:func:`_reference_jvp`): register_autograd's
    own Function has neither a jvp nor a torch.func form. The _Autograd comes last,
    so that ``ctx.needs_input_grad`` indexes the op's inputs. vmap runs the op per
    element (torch's fallback for a custom op), as the generated rule does."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        *inputs, autograd = args
        return call_below_autograd(autograd.op, *inputs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *inputs, autograd = inputs
        autograd.setup_context(ctx, inputs, output)
        ctx.autograd = autograd
        if transforms_active():  # the jvp's primals, kept only where a jvp can come
            ctx.tensor_slots = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
            ctx.other_inputs = [None if isinstance(a, Tensor) else a for a in inputs]
            ctx.save_for_forward(*(inputs[i] for i in ctx.tensor_slots))

    @staticmethod
    def backward(ctx, *grads):
        return ctx.autograd.backward(ctx, *grads) + (None,)

    @staticmethod
    def jvp(ctx, *tangents):
        inputs = list(ctx.other_inputs)
        for slot, tensor in zip(ctx.tensor_slots, ctx.saved_tensors):
            inputs[slot] = tensor
        return _reference_jvp(ctx.autograd.spec, inputs, tangents[:-1])


class _EagerAutograd(torch.autograd.Function):
    """:class:`_OpFunction` for an eager call outside torch.func (forward-mode AD
    included), in the old form: a Function with setup_context binds its arguments to
    the forward's signature on every call (inspect.signature), tens of microseconds
    of Python, comparable to a streaming step's op."""

    @staticmethod
    def forward(ctx, *args):
        output = call_below_autograd(args[-1].op, *args[:-1])
        _OpFunction.setup_context(ctx, args, output)
        return output

    backward = staticmethod(_OpFunction.backward)
    jvp = staticmethod(_OpFunction.jvp)


def call_with_autograd(op, *args):
    """``op(*args)``, recording its backward and its jvp: eagerly on
    :class:`_EagerAutograd`, under a torch.func transform on :class:`_OpFunction`;
    under torch.compile or torch.jit tracing through the op's own autograd
    (register_autograd), which they understand."""
    autograd = _EAGER_AUTOGRAD.get(op)
    if autograd is None or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return op(*args)
    if torch._C._are_functorch_transforms_active():
        return _OpFunction.apply(*args, autograd)
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
    """Gradients of ``layer(*inputs, *layer_args)`` (the reference twin of an op) for the
    inputs in ``needs_grad``, by torch.func.vjp: plain torch ops, which autograd
    (create_graph=True) and torch.func's outer transforms differentiate again. (A
    recomputation under torch.autograd.grad would record nothing inside torch.func,
    whose levels hand a backward unwrapped tensors.)"""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs_grad)) if need and t is not None]

    def of_wanted(*values):
        args = list(inputs)
        for i, value in zip(wanted, values):
            args[i] = value
        return layer(*args, *layer_args)

    results, pullback = torch.func.vjp(of_wanted, *(inputs[i] for i in wanted))
    found = pullback(tuple(_zeros_if_none(g, r) for g, r in zip(grads, results)))
    out = [None] * len(inputs)
    for i, grad in zip(wanted, found):
        out[i] = grad
    return tuple(out)


# The toolkit arguments (fusedrnn/features.py) after ``persistent``, in schema order.
_LSTM_TOOLKIT = ("recurrent_mask", "zoneout_h", "zoneout_c", "cell_clip", "grad_clip")
_GRU_TOOLKIT = ("recurrent_mask", "zoneout_h", "grad_clip")

_SPECS = {
    "lstm_forward": OpSpec(7, 3, 2, 11, _LSTM_TOOLKIT, reference.lstm_layer),
    "gru_forward": OpSpec(6, 2, 1, 10, _GRU_TOOLKIT, reference.gru_layer),
    "lstm_norm_forward": OpSpec(8, 3, 5, 11, _LSTM_TOOLKIT, reference.lstm_norm_recurrence),
    "gru_norm_forward": OpSpec(6, 2, 3, 9, _GRU_TOOLKIT, reference.gru_norm_recurrence),
}


def _reference_jvp(spec: OpSpec, inputs: list, tangents: tuple) -> tuple:
    """The op's output tangents, as forward-mode AD of its reference twin gives them
    (as second-order gradients are; at the reference's speed). The saved outputs
    are non-differentiable: no tangent."""
    n = spec.differentiable
    lengths, reverse = inputs[n], inputs[n + 1]
    toolkit = _reference_toolkit(dict(zip(spec.toolkit, inputs[spec.toolkit_at:])))
    toolkit.pop("grad_clip", None)  # acts in the backward only
    present = [i for i in range(n) if inputs[i] is not None]  # bias, w_hr may be None

    def layer(*primals):
        args = list(inputs[:n])
        for i, primal in zip(present, primals):
            args[i] = primal
        return spec.reference(*args, lengths, reverse, **toolkit)

    primals = tuple(inputs[i] for i in present)
    tangents = tuple(_zeros_if_none(tangents[i], inputs[i]) for i in present)
    return _forward_derivative(layer, primals, tangents) + (None,) * spec.saved


def _forward_derivative(function, primals: tuple, tangents: tuple) -> tuple:
    """The tangents of ``function``'s results. Inside torch.func through its jvp; inside
    ``torch.autograd.forward_ad`` (which nests no second level) on dual tensors of the
    level that asked for them."""
    if torch._C._are_functorch_transforms_active():
        return tuple(torch.func.jvp(function, primals, tangents)[1])
    with forward_ad._set_fwd_grad_enabled(True):  # autograd turns it off inside a jvp
        results = function(*(forward_ad.make_dual(forward_ad.unpack_dual(p).primal, t)
                             for p, t in zip(primals, tangents)))
        return tuple(_zeros_if_none(forward_ad.unpack_dual(r).tangent, r) for r in results)


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


def _backward_is_differentiated() -> bool:
    """Whether autograd records the backward (create_graph=True), or a forward-mode
    level or torch.func transform may carry tangents through it: then it is computed
    by differentiating the reference, whose graph autograd can differentiate again."""
    return torch.is_grad_enabled() or transforms_active()


def _refuse_second_order_grad_clip(toolkit: dict) -> None:
    """Second-order gradients through grad_clip disagreed with finite differences of the
    clipped first-order gradient in our checks: refused rather than returned doubtful.
    torch.func's gradient transforms always ask for a differentiable backward."""
    if toolkit.get("grad_clip"):
        raise RuntimeError("fusedrnn: second-order gradients (create_graph=True) with "
                           "grad_clip are not supported, nor are torch.func's gradient "
                           "transforms or a backward under forward-mode AD, which need a "
                           "differentiable backward; loss.backward() and "
                           "torch.autograd.grad run it")


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
    if _backward_is_differentiated():
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
    if _backward_is_differentiated():
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
    if _backward_is_differentiated():
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
    if _backward_is_differentiated():
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
