"""The fused ops as the modules call them, and the choices around them.

``torch.ops.fusedrnn.*`` are defined in C++ (csrc/ops.cpp) with CPU and
CUDA kernels; ``registration.py`` gives them fake kernels and autograd, so a
model built on them traces with ``torch.compile(fullgraph=True)``.

``lstm_layer`` / ``gru_layer`` / ``rnn_layer`` are what the modules call: one
layer, one direction. Which ops they run is the backend, chosen here:

* ``"fused"``: ``torch.ops.fusedrnn`` (``fusedrnn._C``), CPU and CUDA kernels;
* ``"simt"``: ``torch.ops.fusedrnn_simt``, the CUDA kernel sources run on the
  CPU for CPU tensors (``fusedrnn._simt``, or the library named by
  ``FUSEDRNN_SIMT_LIBRARY``: a sanitizer build; see csrc/simt/);
* ``"reference"``: ``reference.py``, also the fallback without the extension.

``FUSEDRNN_BACKEND`` sets the starting backend (read once, at import);
:func:`set_backend` / :func:`using_backend` change it. The kernel path
(standard step loop or the persistent kernels) is the ops' own plan
(csrc/layer/plan.h); the ``path`` argument carries what :func:`set_persistent`
asks for (:func:`path_request`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings

import torch
from torch import Tensor

from . import cost_model, reference, registration

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
    loop, ``"auto"`` the ops' own plan (csrc/layer/plan.cpp), ``"model"`` the
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


def path_request(x: Tensor, cell: str, hidden: int, train: bool) -> str:
    """The ops' ``path`` argument for a ``cell`` layer of ``hidden`` units on ``x``
    (time-major), in a call with a backward or not: what the mode asks for. The
    ops' plan (csrc/layer/plan.h) decides what runs and says why:
    ``torch.ops.fusedrnn_debug.<cell>_plan``. ``"model"`` takes, on CUDA (and on
    the simt backend, the CUDA kernels on CPU tensors), the path the analytic cost
    model estimates faster on an H100 (``fusedrnn.cost_model.choose_path``); on
    the CPU it is ``"auto"``."""
    if _persistent_mode == "on":
        return "persistent"
    if _persistent_mode == "off":
        return "steps"
    if _persistent_mode == "model" and (x.is_cuda or _backend == "simt"):
        steps, batch, inputs = x.shape
        persistent = _model_chooses_persistent(cell, train, x.dtype, steps, batch, inputs, hidden,
                                               torch.backends.cuda.matmul.allow_tf32)
        return "persistent" if persistent else "steps"
    return "auto"


def layer_plan(cell: str, x: Tensor, hidden: int, train: bool = False,
               backward: bool = False) -> str:
    """The plan (csrc/layer/plan.h) of one ``cell`` layer (``"lstm"``, ``"gru"``,
    ``"rnn_tanh"``, ``"rnn_relu"``) of ``hidden`` units on ``x`` (time-major, no toolkit,
    no projection) under the current backend and mode: ``"path=... gemms=...: why"``,
    or ``"reference"``."""
    if _backend == "reference":
        return "reference"
    names = [a.name for a in getattr(_ops(), f"{cell}_forward").default._schema.arguments]
    gates = registration.CELLS[cell].gates
    steps, batch, inputs = x.shape
    like = dict(dtype=x.dtype, device=x.device)
    weights = {"input": x, "w_ih": torch.zeros(gates * hidden, inputs, **like),
               "w_hh": torch.zeros(gates * hidden, hidden, **like),
               "h0": torch.zeros(batch, hidden, **like), "c0": torch.zeros(batch, hidden, **like)}
    tensors = [weights.get(name) for name in names[:names.index("lengths")]]
    debug = getattr(torch.ops, _NAMESPACES[_backend] + "_debug")
    return getattr(debug, f"{cell}_plan")(*tensors, None, False, train,
                                          path_request(x, cell, hidden, train), backward=backward)


@functools.lru_cache(maxsize=1024)
def _model_chooses_persistent(cell: str, train: bool, dtype: torch.dtype, steps: int, batch: int,
                              inputs: int, hidden: int, allow_tf32: bool) -> bool:
    mode = "train" if train else "infer"
    name = str(dtype).removeprefix("torch.")
    return cost_model.choose_path(cell, mode, name, steps, batch, inputs, hidden,
                                  allow_tf32=allow_tf32) == "persistent"


# --------------------------------------------------------------- autocast


def autocast_dtype(x: Tensor, casts_fp32: bool) -> torch.dtype | None:
    """The dtype a layer computes in under ``torch.autocast``, as torch.nn's does:
    the autocast dtype for an input already in it, or for an fp32 input where
    torch.nn's own kernel is on autocast's lower-precision list (``casts_fp32``:
    on the CPU the LSTM module (oneDNN) and the RNN module and cell (linears), on
    CUDA every module (cuDNN)); else
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
# The modules call one function per cell: one layer, one direction, the
# contract of its twin in reference.py. The toolkit's keywords
# (fusedrnn/features.py) are off when None; ``layer_norm`` is the (gain, bias)
# pairs of the layer's norms (features.layer_norm_pairs).


def lstm_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
               h0: Tensor, c0: Tensor, lengths: Tensor | None = None, reverse: bool = False, *,
               layer_norm: tuple | None = None, **toolkit):
    """``(output, h_n, c_n)``; ``bias`` is b_ih + b_hh; ``layer_norm`` is
    ``(norm_ih, norm_hh, norm_c)``."""
    if layer_norm is not None and w_hr is not None:
        raise ValueError("fusedrnn: layer_norm with a projection (proj_size > 0) is not "
                         "implemented")
    norms = None
    if layer_norm is not None:
        norm_ih, norm_hh, norm_c = layer_norm
        norms = (norm_ih, (w_hh, *norm_hh, *norm_c, h0, c0))
    return _layer("lstm", (x, w_ih, bias, w_hh, w_hr, h0, c0), bias, norms, lengths, reverse,
                  toolkit, layer_norm)


def gru_layer(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, w_hh: Tensor, b_hh: Tensor | None,
              h0: Tensor, lengths: Tensor | None = None, reverse: bool = False, *,
              layer_norm: tuple | None = None, **toolkit):
    """``(output, h_n)``; ``layer_norm`` is ``(norm_ih, norm_hh)``."""
    norms = None
    if layer_norm is not None:
        norm_ih, norm_hh = layer_norm
        norms = (norm_ih, (w_hh, b_hh, *norm_hh, h0))
    return _layer("gru", (x, w_ih, b_ih, w_hh, b_hh, h0), b_ih, norms, lengths, reverse,
                  toolkit, layer_norm)


def rnn_layer(x: Tensor, w_ih: Tensor, bias: Tensor | None, w_hh: Tensor, h0: Tensor,
              lengths: Tensor | None = None, reverse: bool = False, *,
              nonlinearity: str = "tanh", layer_norm: tuple | None = None, **toolkit):
    """``(output, h_n)``; ``bias`` is b_ih + b_hh; ``layer_norm`` is ``(norm_ih, norm_hh)``."""
    norms = None
    if layer_norm is not None:
        norm_ih, norm_hh = layer_norm
        norms = (norm_ih, (w_hh, *norm_hh, h0))
    return _layer(f"rnn_{nonlinearity}", (x, w_ih, bias, w_hh, h0), bias, norms, lengths,
                  reverse, toolkit, layer_norm)


def _layer(cell: str, tensors: tuple, input_bias, norms, lengths, reverse: bool, toolkit: dict,
           layer_norm):
    """One layer of ``cell`` on the backend's ops. ``tensors`` are the forward op's
    tensor arguments; ``norms`` (layer_norm) the norm on the input side and the
    norm op's tensor arguments after xproj. Returns the op's results."""
    x = tensors[0]
    lengths = _prepare_lengths(lengths, x)
    ops = _ops()
    if ops is None:
        return registration.CELLS[cell].layer(*tensors, lengths, reverse, layer_norm=layer_norm,
                                              **toolkit)
    results = registration.CELLS[cell].results
    if norms is not None:
        norm_ih, rest = norms
        xproj = reference.normed_projection(x, tensors[1], input_bias, norm_ih)
        op, args = getattr(ops, f"{cell}_norm_forward"), (xproj, *rest)
    else:
        op, args = getattr(ops, f"{cell}_forward"), tensors
    save = _needs_backward(*args)
    _forward_only(toolkit, save)
    path = () if norms is not None else (path_request(x, cell, args[3].shape[0] //
                                                      registration.CELLS[cell].gates, save),)
    out = _call(op, save, *args, lengths, reverse, save, *path, *_toolkit_args(op, toolkit))
    return out[:results]


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
        toolkit.pop("grad_clip", None)


def _toolkit_args(op, toolkit: dict) -> tuple:
    """The op's trailing toolkit arguments, in its schema's order: none when every
    feature is off, so such a call (and an exported graph) is the plain op's; a
    limit of 0 is off, masks contiguous."""
    if all(value is None for value in toolkit.values()):
        return ()
    names = registration.toolkit_names(op)
    unknown = set(toolkit) - set(names)
    if unknown:
        raise TypeError(f"fusedrnn: unknown toolkit arguments {sorted(unknown)}")
    return tuple(_op_value(toolkit.get(name), default)
                 for name, default in zip(names, registration.toolkit_defaults(op)))


def _op_value(value, default):
    if value is None:
        return default
    return float(value) if isinstance(default, float) else value.contiguous()


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
