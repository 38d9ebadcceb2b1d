"""The fused ops: thin wrappers, fake kernels and autograd.

``torch.ops.fusedrnn.*`` are defined in C++ (csrc/ops.cpp) with CPU and
CUDA kernels. Here they get ``register_fake`` (shapes for torch.compile)
and ``register_autograd`` (their backward is another fused op; a
differentiable backward through ``reference.py`` when a second-order
gradient is asked for), so a model built on them traces with
``torch.compile(fullgraph=True)``.

``lstm_layer`` / ``gru_layer`` are what the modules call: one layer, one
direction. Which ops they run is the backend, chosen here:

* ``"fused"``: ``torch.ops.fusedrnn`` (``fusedrnn._C``), CPU and CUDA kernels;
* ``"simt"``: ``torch.ops.fusedrnn_simt``, the CUDA kernel sources run on the
  CPU for CPU tensors (``fusedrnn._simt``, or the library named by
  ``FUSEDRNN_SIMT_LIBRARY``: a sanitizer build; see csrc/simt/);
* ``"reference"``: ``reference.py``, also the fallback without the extension.

``FUSEDRNN_BACKEND`` sets the starting backend (read once, at import);
:func:`set_backend` / :func:`using_backend` change it. The kernel path
(standard step loop or the persistent kernels) is an argument of the ops,
decided here, in :func:`use_persistent`.
"""

from __future__ import annotations

import contextlib
import importlib
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
BACKENDS = ("fused", "simt", "reference")
_NAMESPACES = {"fused": "fusedrnn", "simt": "fusedrnn_simt"}

if not HAVE_EXTENSION:
    warnings.warn(
        "fusedrnn: the compiled extension fusedrnn._C could not be loaded "
        f"({_LOAD_ERROR}); running the pure-Python reference, which is slow. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def backend() -> str:
    """Which ops the modules run: ``"fused"``, ``"simt"`` or ``"reference"``."""
    return _backend


def use_extension() -> bool:
    return _backend != "reference"


def set_backend(name: str) -> None:
    """Choose the ops the modules run (see the module docstring)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"fusedrnn.ops.set_backend: backend must be one of {BACKENDS}, "
                         f"got {name!r}")
    if name == "fused" and not HAVE_EXTENSION:
        raise RuntimeError(f"fusedrnn: the fused backend needs fusedrnn._C ({_LOAD_ERROR})")
    if name == "simt":
        _load_simt()
    _backend = name


@contextlib.contextmanager
def using_backend(name: str):
    """``with using_backend("simt"): ...`` runs the block on that backend."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def build_info() -> str:
    """What the backend's compiled library contains, e.g. ``"cpu:avx2 cuda:13000"``."""
    if _backend == "reference":
        return "reference" if HAVE_EXTENSION else f"not built ({_LOAD_ERROR})"
    return _ops().build_info()


def _ops():
    """The op namespace of the backend, or None for the reference."""
    return getattr(torch.ops, _NAMESPACES[_backend]) if _backend in _NAMESPACES else None


def _load_simt() -> None:
    """Load the SIMT ops once: the sanitizer build named by FUSEDRNN_SIMT_LIBRARY, else
    fusedrnn._simt."""
    if "simt" in _registered:
        return
    path = os.environ.get("FUSEDRNN_SIMT_LIBRARY")
    try:
        if path:
            torch.ops.load_library(path)
        else:
            importlib.import_module("fusedrnn._simt")
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"fusedrnn: the simt backend needs {path or 'fusedrnn._simt'} "
                           f"({exc}); build it with `python csrc/simt/build.py`") from exc
    _register("simt")


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
    CUDA, and on the simt backend (the CUDA kernels run on CPU tensors),
    ``auto`` keeps the standard kernels: the persistent ones have not been
    timed on a GPU yet, so no measured rule picks them."""
    if x.is_cuda or _backend == "simt":
        return _persistent_mode == "on"
    if _persistent_mode == "auto":
        return x.shape[0] > 1
    return _persistent_mode == "on"


# ----------------------------------------------------------------- layers


def lstm_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
               h0: Tensor, c0: Tensor, lengths: Tensor | None = None, reverse: bool = False):
    """One LSTM layer, one direction: ``(output, h_n, c_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, x)
    ops = _ops()
    if ops is None:
        return reference.lstm_layer(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse)
    save = _needs_backward(x, w_ih, bias, w_hh, w_hr, h0, c0)
    out, h_n, c_n, _, _ = ops.lstm_forward(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse,
                                           save, use_persistent(x))
    return out, h_n, c_n


def gru_layer(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, b_hh: Tensor | None,
              h0: Tensor, lengths: Tensor | None = None, reverse: bool = False):
    """One GRU layer, one direction: ``(output, h_n)``. See csrc/ops.cpp."""
    lengths = _prepare_lengths(lengths, x)
    ops = _ops()
    if ops is None:
        return reference.gru_layer(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse)
    save = _needs_backward(x, w_ih, b_ih, w_hh, b_hh, h0)
    out, h_n, _ = ops.gru_forward(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, save,
                                  use_persistent(x))
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


def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, x, w_ih, w_hh, w_hr, h0, c0, output,
                        gates, cells, lengths, reverse, grad_input=True, persistent=False):
    grad_w_hr = w_hh.new_empty(w_hr.shape) if w_hr is not None else w_hh.new_empty(0)
    return (_grad_input_like(x, grad_input), w_ih.new_empty(w_ih.shape),
            w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape), grad_w_hr,
            h0.new_empty(h0.shape), c0.new_empty(c0.shape))


def _gru_forward_fake(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse,
                      save_for_backward=True, persistent=False):
    steps, batch, _ = x.shape
    hidden = w_ih.shape[0] // 3
    ct = _compute_dtype(x.dtype)
    saved = steps if save_for_backward else 0
    return (x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden),
            x.new_empty(saved, batch, 4 * hidden, dtype=ct))


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


def _lstm_backward(ops, ctx, grad_out, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    x, w_ih, bias, w_hh, w_hr, h0, c0, out, gates, cells, lengths = ctx.saved_tensors
    unused = (None,) * 4  # lengths, reverse, save_for_backward, persistent
    if torch.is_grad_enabled():
        return _differentiable_backward(reference.lstm_layer, (x, w_ih, bias, w_hh, w_hr, h0, c0),
                                        ctx.needs_input_grad[:7], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n, grad_c_n)) + unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_bias, grad_w_hh, grad_w_hr, grad_h0, grad_c0 = (
        ops.lstm_backward(
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


def _gru_backward(ops, ctx, grad_out, grad_h_n, _grad_gates):
    x, w_ih, b_ih, w_hh, b_hh, h0, out, gates, lengths = ctx.saved_tensors
    unused = (None,) * 4  # lengths, reverse, save_for_backward, persistent
    if torch.is_grad_enabled():
        return _differentiable_backward(reference.gru_layer, (x, w_ih, b_ih, w_hh, b_hh, h0),
                                        ctx.needs_input_grad[:6], (lengths, ctx.reverse),
                                        (grad_out, grad_h_n)) + unused
    _check_saved(gates, out)
    grad_x, grad_w_ih, grad_b_ih, grad_w_hh, grad_b_hh, grad_h0 = ops.gru_backward(
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


# ------------------------------------------------------- registration

_registered: set = set()


def _register(backend_name: str) -> None:
    """Fake kernels and autograd for one backend's op namespace (once)."""
    if backend_name in _registered:
        return
    ns = _NAMESPACES[backend_name]
    ops = getattr(torch.ops, ns)
    for op, fake in (("lstm_forward", _lstm_forward_fake), ("lstm_backward", _lstm_backward_fake),
                     ("gru_forward", _gru_forward_fake), ("gru_backward", _gru_backward_fake)):
        torch.library.register_fake(f"{ns}::{op}", fake)
    torch.library.register_autograd(f"{ns}::lstm_forward",
                                    lambda ctx, *grads: _lstm_backward(ops, ctx, *grads),
                                    setup_context=_lstm_setup_context)
    torch.library.register_autograd(f"{ns}::gru_forward",
                                    lambda ctx, *grads: _gru_backward(ops, ctx, *grads),
                                    setup_context=_gru_setup_context)
    # Called directly and differentiated, the backward ops raise, never a silent zero.
    for op in ("lstm_backward", "gru_backward"):
        torch.library.register_autograd(f"{ns}::{op}", _backward_op_has_no_backward,
                                        setup_context=_save_nothing)
    _registered.add(backend_name)


def _starting_backend() -> str:
    requested = os.environ.get("FUSEDRNN_BACKEND", "")
    if requested not in ("",) + BACKENDS:
        warnings.warn(f"fusedrnn: FUSEDRNN_BACKEND={requested!r} is not one of {BACKENDS}; "
                      "ignored", RuntimeWarning, stacklevel=3)
        requested = ""
    if requested == "simt":
        _load_simt()
        return "simt"
    if requested == "reference" or not HAVE_EXTENSION:
        return "reference"
    return "fused"


if HAVE_EXTENSION:
    _register("fused")
_backend = _starting_backend()
