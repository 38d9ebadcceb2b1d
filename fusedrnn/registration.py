"""Fake kernels and autograd for the fused ops (csrc/ops.cpp), per op namespace.

Every op family (``<cell>_forward``, ``<cell>_norm_forward`` and their
backward ops) is registered from one spec, :class:`OpSpec`, which reads the
op's schema: its differentiable tensors come first, then ``lengths``,
``reverse``, its flags and the toolkit (csrc/layer/args.h); its results, then
what it saves for the backward. :data:`CELLS` adds, per cell, what a schema
does not say: the reference twin.

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


class Cell(NamedTuple):
    """What the Python side needs of a cell beyond its ops' schemas."""

    gates: int
    results: int  # the layer's results: output, h_n (and c_n)
    layer: Callable  # reference twin of <cell>_forward
    norm: Callable  # of <cell>_norm_forward


CELLS = {
    "lstm": Cell(4, 3, reference.lstm_layer, reference.lstm_norm_recurrence),
    "gru": Cell(3, 2, reference.gru_layer, reference.gru_norm_recurrence),
    **{f"rnn_{act}": Cell(1, 2, functools.partial(reference.rnn_layer, nonlinearity=act),
                          functools.partial(reference.rnn_norm_recurrence, nonlinearity=act))
       for act in ("tanh", "relu")},
}


class OpSpec(NamedTuple):
    """The shape of a forward op's signature, read from its schema."""

    differentiable: int  # its leading inputs, which take gradients and tangents
    results: int  # its leading outputs, the layer's results
    saved: int  # the outputs after them, saved for the backward (no tangents)
    flags: tuple  # the names of its arguments between `reverse` and the toolkit
    toolkit_at: int  # where its trailing toolkit arguments start
    toolkit: tuple  # their names, in schema order (fusedrnn/features.py)
    names: tuple  # every argument's name
    outputs: tuple  # every output's name
    reference: Callable  # its twin in reference.py: (*differentiable, lengths, reverse, **toolkit)
    backward: object  # its backward op
    backward_names: tuple  # the backward op's arguments' names


def _spec(op, backward, reference_twin) -> OpSpec:
    schema = op.default._schema
    names = tuple(a.name for a in schema.arguments)
    outputs = tuple(r.name for r in schema.returns)
    n, toolkit_at = names.index("lengths"), names.index("recurrent_mask")
    results = sum(name in ("output", "h_n", "c_n") for name in outputs)
    backward_names = tuple(a.name for a in backward.default._schema.arguments)
    return OpSpec(n, results, len(outputs) - results, names[n + 2:toolkit_at], toolkit_at,
                  names[toolkit_at:], names, outputs, reference_twin, backward, backward_names)


@functools.lru_cache(maxsize=None)
def toolkit_names(op) -> tuple:
    """The toolkit arguments of ``op``, in its schema's order (csrc/layer/args.h)."""
    names = [a.name for a in op.default._schema.arguments]
    return tuple(names[names.index("recurrent_mask"):])


@functools.lru_cache(maxsize=None)
def toolkit_defaults(op) -> tuple:
    arguments = op.default._schema.arguments
    first = [a.name for a in arguments].index("recurrent_mask")
    return tuple(a.default_value for a in arguments[first:])


def register(namespace: str) -> None:
    """Fake kernels and autograd for the ops of ``namespace`` (call once)."""
    ops = getattr(torch.ops, namespace)
    debug = getattr(torch.ops, f"{namespace}_debug")
    for name, cell in CELLS.items():
        gates, saved_per_unit, cell_state = debug.__getattr__(f"{name}_layout")()
        for family, twin in (("forward", cell.layer), ("norm_forward", cell.norm)):
            forward_op = getattr(ops, f"{name}_{family}")
            backward_op = getattr(ops, f"{name}_{family.replace('forward', 'backward')}")
            spec = _spec(forward_op, backward_op, twin)
            torch.library.register_fake(f"{namespace}::{name}_{family}",
                                        functools.partial(_forward_fake, spec, saved_per_unit))
            torch.library.register_fake(backward_op.default, functools.partial(_backward_fake, spec))
            backward = functools.partial(_backward, spec)
            torch.library.register_autograd(f"{namespace}::{name}_{family}", backward,
                                            setup_context=functools.partial(_setup_context, spec))
            _EAGER_AUTOGRAD[forward_op] = _Autograd(
                forward_op, functools.partial(_setup_context, spec), backward, spec)
            # Called directly and differentiated, a backward op raises, never a silent zero.
            torch.library.register_autograd(backward_op.default, _backward_op_has_no_backward,
                                            setup_context=_save_nothing)


# ------------------------------------------------------ fake kernels


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _forward_fake(spec: OpSpec, saved_per_unit: int, *args):
    """Empty outputs of the right shapes: results in the input's dtype, the saved
    tensors in the compute dtype (no steps in inference)."""
    arg = dict(zip(spec.names, args))
    first = args[0]  # input (T, B, I) or xproj (T, B, G*H)
    steps, batch = first.shape[0], first.shape[1]
    w_hh, w_hr = arg["w_hh"], arg.get("w_hr")
    hidden = w_hr.shape[1] if w_hr is not None else w_hh.shape[1]
    h_size, gates = w_hh.shape[1], w_hh.shape[0] // hidden
    saved = steps if arg.get("save_for_backward", True) else 0
    ct = _compute_dtype(first.dtype)
    shapes = {"output": ((steps, batch, h_size), None), "h_n": ((batch, h_size), None),
              "c_n": ((batch, hidden), None),
              "gates": ((saved, batch, saved_per_unit * hidden), ct),
              "cells": ((saved, batch, hidden), ct),
              "hh_norm": ((saved, batch, gates * hidden), ct),
              "c_norm": ((saved, batch, hidden), ct),
              "rstd": ((saved, batch, 2 if "c_n" in spec.outputs else 1), ct)}
    return tuple(first.new_empty(shapes[name][0], dtype=shapes[name][1] or first.dtype)
                 for name in spec.outputs)


def _backward_fake(spec: OpSpec, *args):
    """A gradient shaped like each differentiable input; empty for an input given as
    None, and for the input when grad_input is False."""
    inputs = args[spec.results:spec.results + spec.differentiable]
    grad_input = dict(zip(spec.backward_names, args)).get("grad_input", True)
    like = next(t for t in inputs if t is not None)
    return tuple(like.new_empty(0) if t is None or (i == 0 and not grad_input)
                 else t.new_empty(t.shape) for i, t in enumerate(inputs))


# ----------------------------------------------------------- autograd


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


def _setup_context(spec: OpSpec, ctx, inputs, output):
    """Saves the differentiable inputs, the output and the saved tensors, lengths and
    the toolkit's masks; the flags and limits on ctx."""
    n = spec.differentiable
    toolkit = tuple(inputs[spec.toolkit_at:])
    ctx.flags = tuple(inputs[n + 2:spec.toolkit_at])
    ctx.reverse = inputs[n + 1]
    ctx.unused = (None,) * (len(inputs) - n)  # no gradient from lengths onwards
    ctx.toolkit_limits = {i: v for i, v in enumerate(toolkit) if not isinstance(v, Tensor | None)}
    masks = [v if isinstance(v, Tensor | None) else None for v in toolkit]
    saved = output[spec.results:]
    ctx.save_for_backward(*inputs[:n], output[0], *saved, inputs[n], *masks)
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # never a zero gradient the size of the saved tensors


def _backward(spec: OpSpec, ctx, *grads):
    n, s = spec.differentiable, spec.saved
    tensors = ctx.saved_tensors
    inputs, out, saved = tensors[:n], tensors[n], tensors[n + 1:n + 1 + s]
    lengths, masks = tensors[n + 1 + s], tensors[n + 2 + s:]
    toolkit = tuple(ctx.toolkit_limits.get(i, m) for i, m in enumerate(masks))
    unused = ctx.unused
    if _backward_is_differentiated():
        named = _reference_toolkit(dict(zip(spec.toolkit, toolkit)))
        _refuse_second_order_grad_clip(named)
        layer = functools.partial(spec.reference, **named)
        return _differentiable_backward(layer, inputs, ctx.needs_input_grad[:n],
                                        (lengths, ctx.reverse), grads[:spec.results]) + unused
    _check_saved(saved[0], out)
    flags = _backward_flags(spec, ctx)
    likes = (out, *_initial_states(spec, inputs))  # shaped as output, h_n (and c_n)
    result_grads = (_zeros_if_none(g, like) for g, like in zip(grads, likes))
    computed = call_below_autograd(spec.backward, *result_grads, *inputs, out, *saved, lengths,
                                   ctx.reverse, *flags, *toolkit)
    return tuple(g if t is not None and need else None
                 for g, t, need in zip(computed, inputs, ctx.needs_input_grad)) + unused


def _initial_states(spec: OpSpec, inputs) -> tuple:
    """The initial states among the inputs: h0 (and c0)."""
    return tuple(inputs[spec.names.index(name)] for name in ("h0", "c0")
                 if name in spec.names)[:spec.results - 1]


def _backward_flags(spec: OpSpec, ctx) -> tuple:
    """The backward op's flags (its arguments between `reverse` and the toolkit):
    grad_input, whether the input needs its gradient, and the forward's path."""
    names = spec.backward_names
    given = dict(zip(spec.flags, ctx.flags))
    values = {"grad_input": ctx.needs_input_grad[0], "path": given.get("path", "auto")}
    return tuple(values[name] for name in names[names.index("reverse") + 1:
                                                names.index("recurrent_mask")])


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


def _reference_jvp(spec: OpSpec, inputs: list, tangents: tuple) -> tuple:
    """The op's output tangents, as forward-mode AD of its reference twin gives them
    (as second-order gradients are; at the reference's speed). The saved outputs
    are non-differentiable: no tangent."""
    n = spec.differentiable
    lengths, reverse = inputs[n], inputs[n + 1]
    toolkit = _reference_toolkit(dict(zip(spec.toolkit, inputs[spec.toolkit_at:])))
    toolkit.pop("grad_clip", None)  # acts in the backward only
    present = [i for i in range(n) if inputs[i] is not None]  # a bias, w_hr may be None

    def layer(*primals):
        args = list(inputs[:n])
        for i, primal in zip(present, primals):
            args[i] = primal
        return spec.reference(*args, lengths, reverse, **toolkit)

    primals = tuple(inputs[i] for i in present)
    tangents = tuple(_zeros_if_none(tangents[i], inputs[i]) for i in present)
    return _forward_derivative(layer, primals, tangents) + (None,) * spec.saved


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
    """The reference's keywords: those given, a limit of 0 off (None); the ones a cell
    has not (a GRU's zoneout_c, cell_clip) are left out when off."""
    out = {}
    for name, value in toolkit.items():
        if value is None or (not isinstance(value, Tensor) and value == 0):
            continue
        out[name] = value
    return out


def _backward_op_has_no_backward(ctx, *grads):
    raise RuntimeError(
        "fusedrnn: the backward ops are not differentiable themselves; second-order gradients "
        "of the modules go through fusedrnn.reference (autograd does this when the backward "
        "runs with create_graph=True)")


def _save_nothing(ctx, inputs, output):
    pass
