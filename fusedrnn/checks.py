"""Argument checks of the modules: torch.nn's checks, in torch.nn's order, with
torch.nn's exception types and words.

Every message starts with torch.nn's own words, so code and tests matching
torch's messages still match, and adds in parentheses what fusedrnn knows
more (which argument, which shapes). There are three kinds of check:

* torch.nn's own check methods (``RNNBase.check_input``,
  ``check_hidden_size``, ...) run as they are, through ``torch_check``, which
  only adds the detail;
* ATen's checks (cell sizes, devices, sequence length) are restated here in
  ATen's words, in ATen's order;
* where torch.nn fails by accident (``.dim()`` of a list, a matmul of two
  dtypes), the condition is checked up front and raised as an instance of
  torch's type: the classes below are both the natural type and torch's.

Shape and dtype logic only, so it traces under torch.compile.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor


class NotATensorError(TypeError, AttributeError):
    """An argument that must be a tensor is not one (torch.nn fails on its
    ``.dim()``, with AttributeError)."""


class DtypeMismatchError(ValueError, RuntimeError):
    """The input's dtype is not the weights'. torch.nn's LSTM/GRU raise
    ValueError; its cells and its LSTM on a PackedSequence, which reach a
    matmul first, RuntimeError."""


class StateShapeError(RuntimeError, IndexError):
    """Too few states, or a state of the wrong rank, where torch.nn has no
    check of its own and fails on an index (IndexError) or, on another path,
    in a size check (RuntimeError)."""


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def _with_detail(message: str, detail: str) -> str:
    return f"{message} ({detail})" if detail else message


def _aten_name(dtype: torch.dtype) -> str:
    """ATen's name of a dtype, as its messages print it: Float, Double, Half, Long..."""
    return torch.empty(0, dtype=dtype).type().rsplit(".", 1)[-1].removesuffix("Tensor")


def require_tensor(value, role: str) -> None:
    if not isinstance(value, Tensor):
        kind = type(value).__name__
        raise NotATensorError(_with_detail(f"'{kind}' object has no attribute 'dim'",
                                           f"{role} must be a torch.Tensor, got {kind}"))


def constructor_detail(exc: Exception, sizes: dict) -> str:
    """Which size argument torch.nn's constructor error is about, when it does not say."""
    if any(name in str(exc) for name in sizes):
        return ""
    for name, value in sizes.items():
        try:
            operator.index(value)
        except TypeError:
            return f"{name} must be an int, got {value!r} ({type(value).__name__})"
    for name, value in sizes.items():  # then what torch.nn takes for an int, but not everywhere
        if isinstance(value, bool):
            return f"{name} must be an int, got {value!r} (bool)"
        if operator.index(value) < 0:
            return f"{name} must be non-negative, got {value}"
    return ""


# -------------------------------------------------------- LSTM, GRU, RNN


def check_input_rank(name: str, x, batch_first: bool) -> None:
    """``name``: the class, as torch.nn's message names it (its RNN's adds "tensor")."""
    require_tensor(x, f"{name} input")
    if x.dim() not in (2, 3):
        layout = "(N, L, H_in)" if batch_first else "(L, N, H_in)"
        got = f"{x.dim()}D tensor" if name == "RNN" else f"{x.dim()}D"
        raise ValueError(_with_detail(
            f"{name}: Expected input to be 2D or 3D, got {got} instead",
            f"input of shape {_shape(x)}; expected (L, H_in) unbatched or {layout} batched"))


def lstm_pair(hx) -> tuple:
    """``(h_0, c_0)`` read as torch.nn.LSTM reads ``hx``: ``hx[0]``, ``hx[1]``."""
    if isinstance(hx, (tuple, list)) and len(hx) < 2:
        kind = type(hx).__name__
        raise StateShapeError(_with_detail(
            f"{kind} index out of range",
            f"LSTM hx must be (h_0, c_0), got a {kind} of length {len(hx)}"))
    h, c = hx[0], hx[1]
    require_tensor(h, "h_0 (hx[0])")
    require_tensor(c, "c_0 (hx[1])")
    return h, c


def check_lstm_state_ranks(h: Tensor, c: Tensor, batched: bool) -> None:
    rank = 3 if batched else 2
    if h.dim() != rank or c.dim() != rank:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(_with_detail(
            f"For {kind} input, hx and cx should also be {rank}-D but got "
            f"({h.dim()}-D, {c.dim()}-D) tensors",
            f"h_0 of shape {_shape(h)}, c_0 of shape {_shape(c)}"))


def check_lstm_hx_form(hx, batched: bool) -> None:
    """What torch.nn.LSTM hands to ATen as it is: a pair, for batched input."""
    if not batched:
        return  # torch.nn rebuilds (hx[0], hx[1]) itself; extra entries are ignored
    if isinstance(hx, Tensor):
        raise TypeError(_with_detail(
            "lstm() received an invalid combination of arguments",
            "hx must be a tuple (h_0, c_0) for batched input; torch.nn.LSTM takes a stacked "
            "tensor only for unbatched input"))
    if len(hx) != 2:
        raise RuntimeError(_with_detail("lstm expects two hidden states",
                                        f"hx has {len(hx)} tensors, expected (h_0, c_0)"))


def check_hidden_state_rank(h, batched: bool, name: str) -> None:
    """The rank of a GRU's or RNN's ``hx`` (``name``: the class, for the detail)."""
    require_tensor(h, f"{name} hx (h_0)")
    rank = 3 if batched else 2
    if h.dim() != rank:
        kind = "batched 3-D" if batched else "unbatched 2-D"
        raise RuntimeError(_with_detail(
            f"For {kind} input, hx should also be {rank}-D but got {h.dim()}-D tensor",
            f"h_0 of shape {_shape(h)}"))


def torch_check(check, *args, detail) -> None:
    """Runs one of torch.nn's own check methods; its error gets fusedrnn's ``detail()``."""
    try:
        check(*args)
    except ValueError as exc:  # check_input's dtype check: torch's only ValueError here
        raise DtypeMismatchError(_with_detail(str(exc), detail())) from None
    except RuntimeError as exc:
        raise RuntimeError(_with_detail(str(exc), detail())) from None


def check_module_args(module, x: Tensor, batch_sizes, states: list, unbatched: bool) -> None:
    """torch.nn's check_forward_args: input dtype and size, then each state's shape."""
    torch_check(module.check_input, x, batch_sizes,
                detail=lambda: _input_detail(module, x, batch_sizes))
    expected = module._expected_state_sizes(x, batch_sizes)
    for i, state in enumerate(states):
        message = module._STATE_SIZE_MESSAGES[i]
        if batch_sizes is not None and state.dim() != 3:
            raise StateShapeError(_with_detail(
                message.format(expected[i], list(state.size())),
                _state_detail(module, i, state, expected[i], unbatched)))
        torch_check(module.check_hidden_size, state, expected[i], message,
                    detail=lambda: _state_detail(module, i, state, expected[i], unbatched))


def _input_detail(module, x: Tensor, batch_sizes) -> str:
    if x.dtype != module.weight_ih_l0.dtype:
        return ""  # torch's message says it all
    if batch_sizes is not None and x.dim() != 2:
        return f"PackedSequence data must be 2-D (sum of lengths, H_in), got shape {_shape(x)}"
    return (f"input.size(-1) is the feature size: input of shape {_shape(x)}, "
            f"module built with input_size={module.input_size}")


def _state_detail(module, i: int, state: Tensor, expected: tuple, unbatched: bool) -> str:
    name = module._STATE_NAMES[i]
    size = "hidden_size" if i == 1 or not module.proj_size else "proj_size"
    if unbatched:
        got = _shape(state.squeeze(1)) if state.dim() == 3 else _shape(state)
        return (f"{name} must have shape (num_layers * num_directions, {size}) = "
                f"{(expected[0], expected[2])} for unbatched input, got {got}")
    return (f"{name} must have shape (num_layers * num_directions, batch, {size}) = "
            f"{tuple(expected)}, got {_shape(state)}")


def check_aten_arguments(mode: str, num_layers, bidirectional) -> None:
    """torch.nn hands these to ATen, whose argument parser takes no bool for
    ``num_layers`` and nothing but a bool for ``bidirectional``."""
    if isinstance(num_layers, bool) or not isinstance(bidirectional, bool):
        bad = ("num_layers must be an int, got" if isinstance(num_layers, bool)
               else "bidirectional must be a bool, got")
        value = num_layers if isinstance(num_layers, bool) else bidirectional
        raise TypeError(_with_detail(
            f"{mode.lower()}() received an invalid combination of arguments", f"{bad} {value!r}"))


def check_devices(x: Tensor, states: list, names: tuple, params: list) -> None:
    """ATen's check_attributes: the states, then the parameters, on the input's device."""
    for name, state in zip(names, states):
        if state.device != x.device:
            raise RuntimeError(_with_detail(
                f"Input and hidden tensors are not at the same device, found input tensor at "
                f"{x.device} and hidden tensor at {state.device}", f"{name} is on {state.device}"))
    for p in params:
        if p is not None and p.device != x.device:
            raise RuntimeError(_with_detail(
                f"Input and parameter tensors are not at the same device, found input tensor at "
                f"{x.device} and parameter tensor at {p.device}",
                f"move the input or the module with .to({p.device})"))


def check_sequence_length(steps: int) -> None:
    if steps == 0:
        raise RuntimeError(_with_detail("Expected sequence length to be larger than 0 in RNN",
                                        "the input has no time steps"))


def match_state_dtypes(x: Tensor, states: list, names: tuple) -> list:
    """h_0 must have the input's dtype (torch.nn fails in its matmul otherwise);
    a c_0 of lower precision is converted, as torch.nn's kernels promote it.
    Under autocast torch.nn checks no dtype (neither does check_input)."""
    if torch._C._is_any_autocast_enabled():
        return states
    result = []
    for i, (name, state) in enumerate(zip(names, states)):
        if state.dtype != x.dtype:
            if i == 0 or torch.promote_types(x.dtype, state.dtype) != x.dtype:
                raise RuntimeError(_with_detail(
                    f"Input and hidden tensors are not the same dtype, found input tensor with "
                    f"{_aten_name(x.dtype)} and hidden tensor with {_aten_name(state.dtype)}",
                    f"{name} is {state.dtype}, the input and the weights {x.dtype}"))
            state = state.to(x.dtype)
        result.append(state)
    return result


# ------------------------------------------------------------ PackedSequence


def check_packed_steps(batch_sizes: Tensor) -> None:
    """torch.nn reads ``batch_sizes[0]`` before anything else."""
    if batch_sizes.numel() == 0:
        raise IndexError(_with_detail("index 0 is out of bounds for dimension 0 with size 0",
                                      "PackedSequence with an empty batch_sizes: no time steps"))


def check_packed(packed) -> None:
    """A PackedSequence built by hand must be one pack_padded_sequence could build.

    torch.nn.LSTM/GRU read a malformed one without a check: they fail deep in
    ATen (RuntimeError) or, for the inconsistencies raised here as ValueError,
    compute on whatever rows the sizes point at."""
    data, batch_sizes = packed.data, packed.batch_sizes
    if batch_sizes.dtype != torch.int64:
        raise RuntimeError(_with_detail(
            f"expected scalar type Long but found {_aten_name(batch_sizes.dtype)}",
            "PackedSequence batch_sizes must be an int64 tensor"))
    if batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu":
        raise RuntimeError(f"PackedSequence batch_sizes must be a 1-D CPU tensor, got shape "
                           f"{_shape(batch_sizes)} on {batch_sizes.device}")
    if torch.compiler.is_compiling():
        return  # the value checks below read the tensor
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError("PackedSequence batch_sizes must be non-increasing, got "
                           f"{batch_sizes.tolist()}")
    if bool((batch_sizes <= 0).any()):
        raise ValueError(f"PackedSequence batch_sizes must be positive, got {batch_sizes.tolist()}")
    if int(batch_sizes.sum()) != data.shape[0]:
        raise ValueError(f"PackedSequence batch_sizes sum to {int(batch_sizes.sum())} but data has "
                         f"{data.shape[0]} rows")
    batch = int(batch_sizes[0])
    for name in ("sorted_indices", "unsorted_indices"):
        idx = getattr(packed, name)
        if idx is not None and _shape(idx) != (batch,):
            raise ValueError(f"PackedSequence {name} must have shape ({batch},), got {_shape(idx)}")


# ------------------------------------------------------------------ cells


def check_cell_input_rank(name: str, x) -> None:
    require_tensor(x, f"{name} input")
    if x.dim() not in (1, 2):
        raise ValueError(_with_detail(
            f"{name}: Expected input to be 1D or 2D, got {x.dim()}D instead",
            f"input of shape {_shape(x)}; expected (H_in) or (N, H_in)"))


def check_cell_hx_ranks(name: str, hx, lstm: bool) -> None:
    """torch.nn's cells check every entry of ``hx`` (LSTMCell) or ``hx`` (GRUCell)."""
    entries = enumerate(hx) if lstm else [(None, hx)]
    for idx, value in entries:
        label = "hidden" if idx is None else f"hx[{idx}]"
        require_tensor(value, f"{name} {label}")
        if value.dim() not in (1, 2):
            raise ValueError(_with_detail(
                f"{name}: Expected {label} to be 1D or 2D, got {value.dim()}D instead",
                f"{label} of shape {_shape(value)}; expected (H) or (N, H)"))


def cell_states(hx, batched: bool, lstm: bool) -> list:
    """The states as torch.nn's cells hand them to ATen (unbatched: each unsqueezed)."""
    if not lstm:
        return [hx if batched else hx.unsqueeze(0)]
    if not batched:
        h, c = lstm_pair(hx)  # torch.nn rebuilds the pair; extra entries are ignored
        return [h.unsqueeze(0), c.unsqueeze(0)]
    if isinstance(hx, Tensor):
        raise TypeError(_with_detail(
            "lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not Tensor",
            "hx must be a tuple (h_0, c_0)"))
    if len(hx) != 2:
        raise RuntimeError(_with_detail("lstm_cell expects two hidden states",
                                        f"hx has {len(hx)} tensors, expected (h_0, c_0)"))
    return list(hx)


def check_cell_sizes(x: Tensor, states: list, input_size: int, hidden_size: int) -> None:
    """ATen's cell checks on the batched forms: input size, then each state's batch and size."""
    batch, features = x.shape
    if features != input_size:
        raise RuntimeError(_with_detail(
            f"input has inconsistent input_size: got {features} expected {input_size}",
            f"input of feature size {features}, cell built with input_size={input_size}"))
    for i, h in enumerate(states):
        shape = h.shape
        if len(shape) == 2 and shape[0] == batch and shape[1] == hidden_size:
            continue
        name, want = ("h_0", "c_0")[i], (batch, hidden_size)
        if batch != shape[0]:
            raise RuntimeError(_with_detail(
                f"Input batch size {batch} doesn't match hidden{i} batch size {shape[0]}",
                f"{name} must have shape {want}"))
        if len(shape) < 2:
            raise StateShapeError(_with_detail(
                "Dimension out of range (expected to be in range of [-1, 0], but got 1)",
                f"{name} of shape {tuple(shape)} for a batched input: expected {want}"))
        if shape[1] != hidden_size:
            raise RuntimeError(_with_detail(
                f"hidden{i} has inconsistent hidden_size: got {shape[1]}, expected {hidden_size}",
                f"{name} must be 1-D ({hidden_size},) for a 1-D input, 2-D (N, {hidden_size}) "
                f"for a 2-D one"))
        # torch.nn has no check left here and crashes
        raise RuntimeError(f"{name} of shape {tuple(shape)[1:]} for a 1-D input: expected "
                           f"({hidden_size},)")


def _check_device(t: Tensor, weight: Tensor, name: str) -> None:
    if t.device != weight.device:
        raise RuntimeError(_with_detail(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{t.device} and {weight.device}!",
            f"{name} is on {t.device}, the cell on {weight.device}"))


def _check_matmul(t: Tensor, weight: Tensor, name: str, error=RuntimeError) -> None:
    """What torch.nn's cell matmul raises for ``t @ weight.T`` (autocast casts both)."""
    _check_device(t, weight, name)
    if t.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
        raise error(_with_detail(
            f"mat1 and mat2 must have the same dtype, but got {_aten_name(t.dtype)} and "
            f"{_aten_name(weight.dtype)}",
            f"{name} is {t.dtype}, the cell's weights {weight.dtype}"))


def check_cell_dtypes(x: Tensor, states: list, weight: Tensor, hx_given: bool,
                      hidden_first: bool) -> torch.dtype:
    """Devices and dtypes in the order of torch.nn's cell math (LSTMCell multiplies the
    hidden state first, GRUCell the input), then c_0's device.

    Returns the dtype of the results: a c_0 of another dtype promotes them, as in torch.nn."""
    products = [(x, "input", DtypeMismatchError)]
    if hx_given:
        products.insert(0 if hidden_first else 1, (states[0], "h_0", RuntimeError))
    for t, name, error in products:
        _check_matmul(t, weight, name, error)
    if len(states) < 2:
        return weight.dtype
    c = states[1]
    _check_device(c, weight, "c_0")
    if c.dtype.is_complex:
        raise TypeError(f"c_0 is {c.dtype}: fusedrnn computes real states only (torch.nn would "
                        "promote the results to complex)")
    return torch.promote_types(weight.dtype, c.dtype)
