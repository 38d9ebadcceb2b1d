"""The fused ops as the modules call them, and the choices around them.

``torch.ops.fusedrnn.*`` are defined in C++ (csrc/ops.cpp) with CPU and
CUDA kernels; ``registration.py`` gives them fake kernels and autograd, so a
model built on them traces with ``torch.compile(fullgraph=True)``.

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
import functools
import importlib
import os
import warnings

import torch
from torch import Tensor

from . import reference, registration

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

_PERSISTENT_MODES = ("auto", "on", "off", "model")
_persistent_mode = {"1": "on", "0": "off", "model": "model"}.get(
    os.environ.get("FUSEDRNN_PERSISTENT", ""), "auto")


def set_persistent(mode: str) -> None:
    """Choose the kernel path: ``"on"`` runs the persistent whole-sequence
    loops (CPU) and kernels (CUDA) where they fit, ``"off"`` the standard step
    loop, ``"auto"`` the default rule (``use_persistent``), ``"model"`` the
    analytic cost model's choice on CUDA (opt-in: no GPU run has confirmed the
    model yet). The environment variable ``FUSEDRNN_PERSISTENT=1|0|model`` sets
    the starting value."""
    global _persistent_mode
    if mode not in _PERSISTENT_MODES:
        raise ValueError(f"fusedrnn.ops.set_persistent: mode must be one of {_PERSISTENT_MODES}, "
                         f"got {mode!r}")
    _persistent_mode = mode


def persistent_mode() -> str:
    """The current kernel-path mode (see :func:`set_persistent`)."""
    return _persistent_mode


def use_persistent(x: Tensor, cell: str = "lstm", hidden: int = 0, train: bool = False) -> bool:
    """Whether a ``cell`` layer (``"lstm"``/``"gru"``) of ``hidden`` units on ``x``
    (time-major) runs the whole-sequence path, in a call with a backward or not.

    On the CPU ``auto`` (and ``model``) takes the persistent loop for sequences
    of two steps or more (measured faster than the step loop: README, Speed); a
    single step (streaming) is cheaper on the step loop, which packs no weights.
    On CUDA, and on the simt backend (the CUDA kernels run on CPU tensors),
    ``auto`` keeps the standard kernels: the persistent ones have not been
    timed on a GPU yet, so no measured rule picks them. ``model`` takes the
    path the analytic cost model estimates faster on an H100
    (``fusedrnn.bench.model.choose_path``, its inputs in one table there)."""
    if x.is_cuda or _backend == "simt":
        if _persistent_mode == "model":
            steps, batch, inputs = x.shape
            return _model_chooses_persistent(cell, train, x.dtype, steps, batch, inputs, hidden,
                                             torch.backends.cuda.matmul.allow_tf32)
        return _persistent_mode == "on"
    if _persistent_mode in ("auto", "model"):
        return x.shape[0] > 1
    return _persistent_mode == "on"


@functools.lru_cache(maxsize=1024)
def _model_chooses_persistent(cell: str, train: bool, dtype: torch.dtype, steps: int, batch: int,
                              inputs: int, hidden: int, allow_tf32: bool) -> bool:
    from .bench import model  # pure arithmetic; imported on first use only

    mode = "train" if train else "infer"
    name = str(dtype).removeprefix("torch.")
    return model.choose_path(cell, mode, name, steps, batch, inputs, hidden,
                             allow_tf32=allow_tf32) == "persistent"


# --------------------------------------------------------------- autocast


def autocast_dtype(x: Tensor, casts_fp32: bool) -> torch.dtype | None:
    """The dtype a layer computes in under ``torch.autocast``, as torch.nn's does:
    the autocast dtype for an input already in it, or for an fp32 input where
    torch.nn's own kernel is on autocast's lower-precision list (``casts_fp32``:
    the LSTM module on the CPU (oneDNN), LSTM and GRU on CUDA (cuDNN)); else
    None, no cast. The ops themselves never autocast inside."""
    if not torch._C._is_any_autocast_enabled():  # the common case, in one cheap call
        return None
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    if x.dtype == dtype or (casts_fp32 and x.dtype == torch.float32):
        return dtype
    return None


# ----------------------------------------------------------------- layers


def lstm_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
               h0: Tensor, c0: Tensor, lengths: Tensor | None = None, reverse: bool = False, *,
               recurrent_mask: Tensor | None = None, zoneout_h: Tensor | None = None,
               zoneout_c: Tensor | None = None, cell_clip: float | None = None,
               grad_clip: float | None = None, layer_norm: tuple | None = None):
    """One LSTM layer, one direction: ``(output, h_n, c_n)``. See csrc/ops.cpp; the
    keywords are the toolkit's (fusedrnn/features.py), off when None; ``layer_norm``
    is ``(norm_ih, norm_hh, norm_c)``, a (gain, bias) pair each (reference.py)."""
    lengths = _prepare_lengths(lengths, x)
    toolkit = dict(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                   cell_clip=cell_clip, grad_clip=grad_clip)
    ops = _ops()
    if ops is None:
        return reference.lstm_layer(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse,
                                    layer_norm=layer_norm, **toolkit)
    if layer_norm is not None:
        if w_hr is not None:
            raise ValueError("fusedrnn: layer_norm with a projection (proj_size > 0) is not "
                             "implemented")
        norm_ih, norm_hh, norm_c = layer_norm
        return _norm_layer(ops.lstm_norm_forward, reference.normed_projection(x, w_ih, bias, norm_ih),
                           (w_hh, *norm_hh, *norm_c), (h0, c0), lengths, reverse, toolkit)
    save = _needs_backward(x, w_ih, bias, w_hh, w_hr, h0, c0)
    _forward_only(toolkit, save)
    out, h_n, c_n, _, _ = _call(
        ops.lstm_forward, save, x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, reverse, save,
        use_persistent(x, "lstm", w_ih.shape[0] // 4, save) and not _toolkit_on(toolkit),
        *_toolkit_args(toolkit))
    return out, h_n, c_n


def gru_layer(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, b_hh: Tensor | None,
              h0: Tensor, lengths: Tensor | None = None, reverse: bool = False, *,
              recurrent_mask: Tensor | None = None, zoneout_h: Tensor | None = None,
              grad_clip: float | None = None, layer_norm: tuple | None = None):
    """One GRU layer, one direction: ``(output, h_n)``. See csrc/ops.cpp; the keywords
    are the toolkit's (fusedrnn/features.py), off when None; ``layer_norm`` is
    ``(norm_ih, norm_hh)``."""
    lengths = _prepare_lengths(lengths, x)
    toolkit = dict(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, grad_clip=grad_clip)
    ops = _ops()
    if ops is None:
        return reference.gru_layer(x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse,
                                   layer_norm=layer_norm, **toolkit)
    if layer_norm is not None:
        norm_ih, norm_hh = layer_norm
        return _norm_layer(ops.gru_norm_forward, reference.normed_projection(x, w_ih, b_ih, norm_ih),
                           (w_hh, b_hh, *norm_hh), (h0,), lengths, reverse, toolkit)
    save = _needs_backward(x, w_ih, b_ih, w_hh, b_hh, h0)
    _forward_only(toolkit, save)
    out, h_n, _ = _call(
        ops.gru_forward, save, x, w_ih, b_ih, w_hh, b_hh, h0, lengths, reverse, save,
        use_persistent(x, "gru", w_ih.shape[0] // 3, save) and not _toolkit_on(toolkit),
        *_toolkit_args(toolkit))
    return out, h_n


def _norm_layer(op, xproj: Tensor, weights: tuple, states: tuple, lengths, reverse: bool,
                toolkit: dict):
    """A layer_norm layer: its input side ``xproj`` (all steps, in torch ops, which
    autograd differentiates) computed by the caller, the recurrence by the ``*_norm``
    op. Returns the op's output and final states."""
    save = _needs_backward(xproj, *weights, *states)
    _forward_only(toolkit, save)
    results = _call(op, save, xproj, *weights, *states, lengths, reverse, save,
                    *_toolkit_args(toolkit))
    return results[:1 + len(states)]


def _call(op, save: bool, *args):
    """``op(*args)``, with its backward recorded when autograd will need it, or through
    autograd when a forward-mode tangent may flow (its jvp); else straight to the
    kernel, past the autograd layer (registration.py)."""
    if save or registration.transforms_active():
        return registration.call_with_autograd(op, *args)
    return registration.call_below_autograd(op, *args)


def _forward_only(toolkit: dict, save: bool) -> None:
    """grad_clip acts in the backward only: a call without one drops it, and so
    keeps the persistent path (inference costs nothing with grad_clip set)."""
    if not save:
        toolkit["grad_clip"] = None


def _toolkit_on(toolkit: dict) -> bool:
    """Whether any toolkit feature is on: the persistent loops and kernels take none of
    them, so such a layer always runs the step loop."""
    return any(value is not None for value in toolkit.values())


def _toolkit_args(toolkit: dict) -> tuple:
    """The ops' trailing toolkit arguments (schema order, as in ``toolkit``): none when
    every feature is off, so such a call (and an exported graph) is the plain op's."""
    if not _toolkit_on(toolkit):
        return ()
    return tuple(_op_value(name, value) for name, value in toolkit.items())


def _op_value(name: str, value):
    """A toolkit argument as the op takes it: a limit of 0 is off, masks contiguous."""
    if name.endswith("clip"):
        return 0.0 if value is None else float(value)
    return None if value is None else value.contiguous()


def _needs_backward(*tensors) -> bool:
    """Whether autograd may call the backward: else the forward saves nothing. Under a
    torch.func transform it may, whatever ``requires_grad`` says of the tensors."""
    return torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors)
        or torch._C._are_functorch_transforms_active())


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


# ------------------------------------------------------- registration

_registered: set = set()


def _register(backend_name: str) -> None:
    """Fake kernels and autograd for one backend's op namespace (once)."""
    if backend_name not in _registered:
        registration.register(_NAMESPACES[backend_name])
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
