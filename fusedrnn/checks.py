"""Argument checks for the modules' forward, run before any kernel.

Each failure names the argument and says what was expected and what came:
shape, rank, dtype or device. Everything here is shape/dtype logic only, so
it traces under torch.compile without a graph break.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_floating_input(name: str, x: Tensor, like: Tensor) -> None:
    """``x`` must be a floating tensor with ``like``'s dtype and device."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the module's parameters are {like.dtype}; "
                        f"convert one with .to({like.dtype}) or module.to({x.dtype})")
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but the module's parameters are on "
                         f"{like.device}")


def check_input_rank(module_name: str, x: Tensor, batch_first: bool) -> None:
    if x.dim() not in (2, 3):
        batched = "(N, L, H_in)" if batch_first else "(L, N, H_in)"
        raise ValueError(f"{module_name}: input must be 2-D (L, H_in) unbatched or 3-D {batched} "
                         f"batched, got a {x.dim()}-D tensor of shape {_shape(x)}")


def check_feature_size(module_name: str, x: Tensor, input_size: int) -> None:
    if x.shape[-1] != input_size:
        raise ValueError(f"{module_name}: input.size(-1) must be input_size={input_size}, "
                         f"got input of shape {_shape(x)}")


def check_state(name: str, state: Tensor, expected: tuple, unbatched: bool, like: Tensor) -> None:
    """``state`` must have shape ``expected`` (already without the batch dim if unbatched)."""
    check_floating_input(name, state, like)
    if state.dim() != len(expected):
        kind = "unbatched 2-D input" if unbatched else "batched 3-D input"
        raise ValueError(f"{name} must be {len(expected)}-D for {kind}, expected shape "
                         f"{expected}, got a {state.dim()}-D tensor of shape {_shape(state)}")
    if _shape(state) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {_shape(state)}")


def check_lstm_hx(hx) -> tuple:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError("LSTM hx must be a tuple (h_0, c_0) of two tensors, got "
                        f"{type(hx).__name__}" + (f" of length {len(hx)}"
                                                  if isinstance(hx, (tuple, list)) else ""))
    return hx[0], hx[1]


def check_gru_hx(hx) -> Tensor:
    if not isinstance(hx, Tensor):
        raise TypeError(f"GRU hx must be a tensor h_0, got {type(hx).__name__}")
    return hx


def check_packed(packed: PackedSequence) -> None:
    """A PackedSequence built by hand must still be consistent."""
    data, batch_sizes = packed.data, packed.batch_sizes
    if data.dim() != 2:
        raise ValueError(f"PackedSequence data must be 2-D (sum of lengths, H_in), got shape "
                         f"{_shape(data)}")
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or batch_sizes.device.type != "cpu":
        raise ValueError("PackedSequence batch_sizes must be a 1-D int64 CPU tensor, got "
                         f"{batch_sizes.dtype} of shape {_shape(batch_sizes)} on {batch_sizes.device}")
    if torch.compiler.is_compiling():
        return  # the value checks below read the tensor
    if batch_sizes.numel() and (bool((batch_sizes <= 0).any())
                                or bool((batch_sizes[1:] > batch_sizes[:-1]).any())):
        raise ValueError("PackedSequence batch_sizes must be positive and non-increasing, got "
                         f"{batch_sizes.tolist()}")
    if int(batch_sizes.sum()) != data.shape[0]:
        raise ValueError(f"PackedSequence batch_sizes sum to {int(batch_sizes.sum())} but data has "
                         f"{data.shape[0]} rows")
    batch = int(batch_sizes[0]) if batch_sizes.numel() else 0
    for name in ("sorted_indices", "unsorted_indices"):
        idx = getattr(packed, name)
        if idx is not None and _shape(idx) != (batch,):
            raise ValueError(f"PackedSequence {name} must have shape ({batch},), got {_shape(idx)}")
