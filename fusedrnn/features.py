"""The sequence-modelling toolkit: the modules' optional keywords (all off by default).

``forget_bias`` (LSTM) initialises the forget-gate slice of the biases;
``weight_drop`` is DropConnect on W_hh; ``cell_clip`` (LSTM) clamps the cell
state; ``zoneout`` keeps units of the previous state at random;
``recurrent_dropout`` drops units of h_{t-1} where it enters W_hh h_{t-1};
``grad_clip`` clamps the gradient each step sends back through the recurrence;
``layer_norm`` adds LayerNorms on the input and recurrent parts of the gate
pre-activations and (LSTM) on the cell state, in haste's form.
Their exact semantics are those of ``reference.py``, which the kernels match.

Every random mask is drawn here, with torch's generator (deterministic under
``torch.manual_seed``), and handed to the ops as a tensor: the ops stay pure
functions of their arguments. In eval mode the dropouts are the identity and
zoneout mixes with its expectation.

The LSTM takes all seven; the GRU and the Elman RNN all but the LSTM-only
``forget_bias`` and ``cell_clip`` (and zoneout's z_c).

The kernels: ``forget_bias`` is initialisation only and ``weight_drop`` hands
the masked W_hh to the unchanged kernels; the other four are computed in the
fused step kernels (CPU and CUDA: the cells' element math in
csrc/include/fusedrnn/cells/, driven by csrc/layer/forward.cpp and
backward.cpp; the toolkit's fields in csrc/layer/args.h); ``layer_norm`` has
ops of its own (csrc/layer/norm.cpp, row kernels in
csrc/include/fusedrnn/norm_rows.h) after its input side is computed for all
steps in torch ops (``ops.py``). The persistent whole-sequence paths (CPU
loops, CUDA kernels) take none of them: a layer with one on runs the step loop
(the plan, csrc/layer/plan.cpp, says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import registration
from .reference import LAYER_NORM_EPS

KEYWORDS = ("forget_bias", "weight_drop", "cell_clip", "zoneout", "recurrent_dropout",
            "grad_clip", "layer_norm")
_LSTM_ONLY = ("forget_bias", "cell_clip")


@dataclass(frozen=True)
class Toolkit:
    """The toolkit settings of one module; ``None`` / 0 means off."""

    forget_bias: float | None = None
    weight_drop: float = 0.0
    cell_clip: float | None = None
    zoneout: tuple = (0.0, 0.0)  # (z_h, z_c); z_c is 0 for a GRU
    recurrent_dropout: float = 0.0
    grad_clip: float | None = None
    layer_norm: bool = False

    @property
    def per_call(self) -> bool:
        """Whether ``layer_arguments`` has anything to hand the ops (a streaming call
        skips it otherwise)."""
        return (self.cell_clip is not None or self.grad_clip is not None
                or self.recurrent_dropout > 0 or any(self.zoneout))

    def describe(self) -> str:
        """The non-default settings, as ``extra_repr`` shows them."""
        off = Toolkit()
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in KEYWORDS
                         if getattr(self, name) != getattr(off, name))


def pop_toolkit(mode: str, kwargs: dict, allowed: tuple = KEYWORDS) -> Toolkit:
    """Take the toolkit keywords out of a constructor's ``kwargs`` and check them.
    ``mode`` is torch.nn's (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``);
    ``allowed`` the keywords this class takes."""
    given = {name: kwargs.pop(name) for name in KEYWORDS if name in kwargs}
    for name in given:
        if name not in allowed or (mode != "LSTM" and name in _LSTM_ONLY):
            raise TypeError(f"__init__() got an unexpected keyword argument '{name}' "
                            f"(fusedrnn: {name} is not a feature of this {mode} class)")
    settings = {}
    if given.get("forget_bias") is not None:
        settings["forget_bias"] = _finite(given["forget_bias"], "forget_bias")
    for name in ("weight_drop", "recurrent_dropout"):
        if name in given:
            settings[name] = _probability(given[name], name, upper_open=True)
    for name in ("cell_clip", "grad_clip"):
        if given.get(name) is not None:
            settings[name] = _positive(given[name], name)
    if "zoneout" in given:
        settings["zoneout"] = _zoneout(given["zoneout"], mode)
    if "layer_norm" in given:
        if not isinstance(given["layer_norm"], bool):
            raise TypeError(f"fusedrnn: layer_norm must be True or False, "
                            f"got {given['layer_norm']!r}")
        settings["layer_norm"] = given["layer_norm"]
    return Toolkit(**settings)


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"fusedrnn: {name} must be a finite number, got {value!r}")
    return float(value)


def _probability(value, name: str, upper_open: bool) -> float:
    value = _finite(value, name)
    if value < 0 or value > 1 or (upper_open and value == 1):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"fusedrnn: {name} must be a probability in {bound}, got {value!r}")
    return value


def _positive(value, name: str) -> float:
    value = _finite(value, name)
    if value <= 0:
        raise ValueError(f"fusedrnn: {name} must be > 0 (None turns it off), got {value!r}")
    return value


def _zoneout(value, mode: str) -> tuple:
    """``(z_h, z_c)`` from a float (both, for an LSTM) or a pair; a GRU takes z_h only."""
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(f"fusedrnn: zoneout must be a float or (z_h, z_c), got {value!r}")
        z_h = _probability(value[0], "zoneout z_h", upper_open=False)
        z_c = _probability(value[1], "zoneout z_c", upper_open=False) if len(value) == 2 else 0.0
    else:
        z_h = _probability(value, "zoneout", upper_open=False)
        z_c = z_h if mode == "LSTM" else 0.0
    if mode != "LSTM" and z_c != 0:
        raise ValueError(f"fusedrnn: a {mode} has no cell state; zoneout takes z_h only, "
                         f"got {value!r}")
    return (z_h, z_c)


# ------------------------------------------------------------------ masks


def bernoulli_mask(shape, p_one: float, like: Tensor) -> Tensor:
    """1 with probability ``p_one``, else 0, in ``like``'s dtype and device (torch's RNG)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(p_one)


def dropped_weight(w_hh: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect: ``w_hh`` times a fresh mask scaled by 1/(1-p) in training, else itself.
    The parameter is never modified; autograd carries the gradient back to it."""
    if not training or p == 0:
        return w_hh
    return w_hh * bernoulli_mask(w_hh.shape, 1 - p, w_hh).div_(1 - p)


def layer_arguments(tk: Toolkit, training: bool, steps: int, batch: int, hidden: int,
                    h_size: int, like: Tensor, lstm: bool) -> dict:
    """The keyword arguments of ``ops.lstm_layer`` / ``gru_layer`` / ``rnn_layer`` for one
    layer and direction: masks drawn for this call, clip limits."""
    args = {}
    if lstm and tk.cell_clip is not None:
        args["cell_clip"] = tk.cell_clip
    if tk.grad_clip is not None:
        args["grad_clip"] = tk.grad_clip
    if training and tk.recurrent_dropout > 0:
        keep = 1 - tk.recurrent_dropout
        args["recurrent_mask"] = bernoulli_mask((batch, h_size), keep, like).div_(keep)
    z_h, z_c = tk.zoneout
    if z_h > 0:
        args["zoneout_h"] = _zoneout_weights(z_h, (steps, batch, h_size), training, like)
    if lstm and z_c > 0:
        args["zoneout_c"] = _zoneout_weights(z_c, (steps, batch, hidden), training, like)
    return args


def _zoneout_weights(z: float, shape, training: bool, like: Tensor) -> Tensor:
    """The weight of the previous state per element and step: d ~ Bernoulli(z) in
    training, the expectation z in eval."""
    if training:
        return bernoulli_mask(shape, z, like)
    return torch.full(shape, z, dtype=like.dtype, device=like.device)


def init_forget_bias(module, hidden: int, value: float, names) -> None:
    """The forget gate's slice (the second H) of every ``bias_ih*`` to ``value`` and of
    every ``bias_hh*`` to 0."""
    with torch.no_grad():
        for name in names:
            if name.startswith("bias_ih"):
                getattr(module, name)[hidden:2 * hidden].fill_(value)
            elif name.startswith("bias_hh"):
                getattr(module, name)[hidden:2 * hidden].zero_()


def add_layer_norms(module, suffixes, mode: str) -> list:
    """layer_norm's parameters: per layer and direction (``suffixes``: ``"_l0"``,
    ``"_l0_reverse"``, ...; ``""`` for a cell), LayerNorms (gain 1, bias 0) named
    ``layer_norm_ih{suffix}`` and ``layer_norm_hh{suffix}`` over the G*H gate vector
    (``mode`` is torch.nn's: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ...) and, for an
    LSTM, ``layer_norm_c{suffix}`` over the cell. Registered as submodules, so their
    parameters are ``layer_norm_ih_l0.weight``, ... in the state_dict. Returns the
    ``(role, name)`` pairs per suffix (roles ``norm_ih``, ...)."""
    hidden = module.hidden_size
    weight = next(module.parameters())
    like = dict(device=weight.device, dtype=weight.dtype)
    gates = registration.CELLS[mode.lower()].gates  # torch.nn's mode names the cell
    parts = (("ih", gates * hidden), ("hh", gates * hidden))
    if mode == "LSTM":
        parts += (("c", hidden),)
    roles = []
    for suffix in suffixes:
        roles.append([])
        for part, size in parts:
            name = f"layer_norm_{part}{suffix}"
            module.add_module(name, torch.nn.LayerNorm(size, eps=LAYER_NORM_EPS, **like))
            roles[-1].append((f"norm_{part}", name))
    return roles


def reset_layer_norms(module) -> None:
    """layer_norm's LayerNorms back to gain 1, bias 0 (after torch.nn's
    ``reset_parameters``, which draws every parameter of the module, theirs too)."""
    for child in module.children():
        if isinstance(child, torch.nn.LayerNorm):
            child.reset_parameters()


def layer_norm_pairs(params: dict, cast) -> tuple | None:
    """The ops' ``layer_norm`` argument from one layer and direction's parameters by
    role: the (gain, bias) pairs of its norms (ih, hh[, c]), each cast by ``cast``;
    None when the layer has none."""
    norms = [params[role] for role in ("norm_ih", "norm_hh", "norm_c") if role in params]
    return tuple((cast(norm.weight), cast(norm.bias)) for norm in norms) or None
