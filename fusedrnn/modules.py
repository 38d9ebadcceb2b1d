"""fusedrnn.LSTM, GRU, RNN and their cells: drop-ins for their torch.nn twins.

LSTM, GRU and RNN derive from torch.nn's ``RNNBase``, the cells from
``torch.nn.LSTMCell``/``GRUCell``/``RNNCell`` themselves, so constructor checks, parameter
names, shapes, initialisation, ``state_dict``, ``flatten_parameters``,
pickling and ``.to()`` are torch's own. Only ``forward`` differs: each layer
and direction runs one fused op (``fusedrnn.ops``), with layers, directions,
dropout and packing composed here, after torch.nn's argument checks
(``checks.py``). (LSTM, GRU and RNN deliberately do not derive from
``torch.nn.LSTM``/``GRU``/``RNN``: torch.compile refuses to trace any instance
of those.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.rnn import RNNBase
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from . import checks, features, ops
from .streaming import Stepping


def _cast_to(dtype: torch.dtype):
    """A function casting a parameter (or None) to `dtype`; a no-op when it has it."""
    return lambda t: t if t is None or t.dtype == dtype else t.to(dtype)


def _role(name: str) -> str:
    """A parameter's role from its torch.nn name: ``weight_hh_l1_reverse`` -> ``w_hh``."""
    return name.split("_l")[0].replace("weight_", "w_").replace("bias_", "b_")


def _int_arguments(module, names: tuple) -> dict:
    """The size arguments a failed torch.nn constructor had already stored."""
    return {name: module.__dict__[name] for name in names if name in module.__dict__}


class _FusedRNNBase(Stepping, RNNBase):
    """Shared forward of LSTM, GRU and RNN: input forms, states, layers, directions.

    The constructor is RNNBase's own (same arguments, checks and errors); where
    its error does not name the argument, fusedrnn adds which one it was. The
    toolkit keywords (``features.py``) are taken out first and stored as
    ``self.toolkit``; they add nothing to the state_dict.
    """

    def __init__(self, mode, *args, **kwargs):
        # Set before RNNBase's constructor, which calls reset_parameters.
        self.toolkit = features.pop_toolkit(mode, kwargs)
        try:
            super().__init__(mode, *args, **kwargs)
        except (TypeError, RuntimeError) as exc:
            sizes = _int_arguments(self, ("input_size", "hidden_size", "num_layers", "proj_size"))
            detail = checks.constructor_detail(exc, sizes)
            if not detail:
                raise
            raise type(exc)(f"{exc} ({detail})") from None
        # (role, attribute name) per layer-direction, parsed once: the names never change.
        self._param_roles = [[(_role(name), name) for name in names]
                             for names in self._all_weights]
        if self.toolkit.forget_bias is not None and not self.bias:
            raise ValueError("fusedrnn: forget_bias needs bias=True")
        if any(self.toolkit.zoneout) and self.proj_size > 0:
            raise ValueError("fusedrnn: zoneout with proj_size > 0 is not implemented")
        if self.toolkit.layer_norm:
            if self.proj_size > 0:
                raise ValueError("fusedrnn: layer_norm with proj_size > 0 is not implemented")
            suffixes = [names[0][len("weight_ih"):] for names in self._all_weights]
            for roles, norms in zip(self._param_roles,
                                    features.add_layer_norms(self, suffixes, mode)):
                roles += norms

    def reset_parameters(self) -> None:
        super().reset_parameters()
        toolkit = self.__dict__.get("toolkit")
        if toolkit is not None and toolkit.forget_bias is not None:
            features.init_forget_bias(self, self.hidden_size, toolkit.forget_bias,
                                      self._flat_weights_names)
        features.reset_layer_norms(self)

    def extra_repr(self) -> str:
        toolkit = self.toolkit.describe()
        return super().extra_repr() + (", " + toolkit if toolkit else "")

    # Whether torch.nn's CPU kernel is on autocast's lower-precision list (oneDNN's LSTM;
    # the RNN's linear), so that autocast computes an fp32 input in bf16; cuDNN's all are.
    _AUTOCASTS_FP32_ON_CPU: bool

    def _toolkit_arguments(self, layer_input: Tensor, state: list) -> dict:
        """The toolkit's op arguments for one layer and direction (masks drawn now)."""
        if not self.toolkit.per_call:
            return {}
        steps, batch = layer_input.shape[0], layer_input.shape[1]
        return features.layer_arguments(self.toolkit, self.training, steps, batch,
                                         self.hidden_size, state[0].shape[-1], layer_input,
                                         lstm=self.mode == "LSTM")

    # The cell-specific parts -------------------------------------------------
    def _state_sizes(self) -> tuple:
        raise NotImplementedError

    def _run_layer(self, layer_input, params, state, lengths, reverse):
        raise NotImplementedError

    # -------------------------------------------------------------------------
    def _layer_params(self, k: int) -> dict:
        """Parameters of layer-direction ``k`` by role: w_ih, w_hh, b_ih, b_hh, w_hr (and
        layer_norm's LayerNorms norm_ih, norm_hh, norm_c)."""
        params = self._parameters  # a parametrized or replaced weight is found by getattr
        return {role: params[name] if name in params else getattr(self, name)
                for role, name in self._param_roles[k]}

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        checks.check_input_rank(self._TORCH_NAME, input, self.batch_first)
        unbatched = input.dim() == 2
        # torch.nn checks an unbatched input in its batched form
        x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
        steps = x.shape[1] if self.batch_first else x.shape[0]
        states = self._checked_states(x, hx, None, unbatched, steps)
        if self.batch_first:
            x = x.transpose(0, 1)
        output, finals = self._run_layers(x, states, None)
        if unbatched:
            output = output.squeeze(1)
            finals = [s.squeeze(1) for s in finals]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, self._pack_states(finals)

    def _forward_packed(self, input: PackedSequence, hx):
        checks.check_packed_steps(input.batch_sizes)
        states = self._checked_states(input.data, hx, input.batch_sizes, False, None)
        checks.check_packed(input)
        x, lengths = pad_packed_sequence(input)  # (T, B, I), batch in the caller's order
        output, finals = self._run_layers(x, states, lengths)
        return self._repack(output, input), self._pack_states(finals)

    def _checked_states(self, x: Tensor, hx, batch_sizes, unbatched: bool, steps) -> list:
        """The initial states as (L*D, N, size) tensors, after torch.nn's checks in its order:
        states' ranks, input and state shapes, what ATen checks (devices, length, dtypes)."""
        packed = batch_sizes is not None
        if hx is None:
            states = self._zero_states(x, batch_sizes)
        else:
            states = self._user_states(hx, not unbatched, packed)
        checks.check_module_args(self, x, batch_sizes, states, unbatched)
        if hx is not None:
            self._check_hx_form(hx, not unbatched)
        checks.check_aten_arguments(self.mode, self.num_layers, self.bidirectional)
        checks.check_devices(x, states, self._STATE_NAMES, self._flat_weights)  # what ATen gets
        if steps is not None:
            checks.check_sequence_length(steps)
        return checks.match_state_dtypes(x, states, self._STATE_NAMES)

    def _zero_states(self, x: Tensor, batch_sizes) -> list:
        """torch.nn's default states: zeros in the input's dtype and device."""
        D = 2 if self.bidirectional else 1
        if batch_sizes is not None:
            batch = int(batch_sizes[0])
        else:
            batch = x.shape[0] if self.batch_first else x.shape[1]
        return [torch.zeros(self.num_layers * D, batch, size, dtype=x.dtype, device=x.device)
                for size in self._state_sizes()]

    def _run_layers(self, x: Tensor, states: list, lengths: Tensor | None):
        D = 2 if self.bidirectional else 1
        if lengths is not None:
            lengths = lengths.to(x.device)
        compute = ops.autocast_dtype(x, casts_fp32=self._AUTOCASTS_FP32_ON_CPU or x.is_cuda)
        if compute is not None:
            x, states = x.to(compute), [s.to(compute) for s in states]
        layer_input = x
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for d in range(D):
                k = layer * D + d
                out, *final = self._run_layer(layer_input, self._layer_params(k),
                                              [s[k] for s in states], lengths, d == 1)
                outputs.append(out)
                for acc, f in zip(finals, final):
                    acc.append(f)
            layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        # One layer and direction: its final state viewed as (1, B, H), not copied by stack.
        return layer_input, [f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f) for f in finals]

    @staticmethod
    def _repack(output: Tensor, like: PackedSequence) -> PackedSequence:
        """Pack ``output`` (batch in the caller's order) exactly as ``like`` is packed."""
        if like.sorted_indices is not None:
            output = output.index_select(1, like.sorted_indices)
        # The rows (t, b) with b < batch_sizes[t], time-major: one index_select (which,
        # unlike pack_padded_sequence, has a forward-mode derivative).
        steps, batch = output.shape[0], output.shape[1]
        batch_sizes = like.batch_sizes[:steps].to(output.device)
        active = torch.arange(batch, device=output.device) < batch_sizes.unsqueeze(1)
        rows = active.flatten().nonzero().squeeze(1)
        data = output.reshape(steps * batch, -1).index_select(0, rows)
        return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.LSTM`: ``LSTM(input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
    device=None, dtype=None)``, same parameters and returns."""

    _TORCH_NAME = "LSTM"  # as torch.nn's messages name the class
    _AUTOCASTS_FP32_ON_CPU = True
    _STATE_NAMES = ("h_0", "c_0")
    _STATE_SIZE_MESSAGES = ("Expected hidden[0] size {}, got {}",
                            "Expected hidden[1] size {}, got {}")
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size  # torch.nn's own

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    def _state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def _expected_state_sizes(self, x, batch_sizes):
        return (self.get_expected_hidden_size(x, batch_sizes),
                self.get_expected_cell_size(x, batch_sizes))

    @staticmethod
    def _user_states(hx, batched: bool, packed: bool) -> list:
        h, c = checks.lstm_pair(hx)
        if not packed:  # torch.nn checks no rank on a PackedSequence; the size check does
            checks.check_lstm_state_ranks(h, c, batched)
        return [h, c] if batched else [h.unsqueeze(1), c.unsqueeze(1)]

    @staticmethod
    def _check_hx_form(hx, batched: bool) -> None:
        checks.check_lstm_hx_form(hx, batched)

    @staticmethod
    def _pack_states(finals):
        return finals[0], finals[1]

    def _run_layer(self, layer_input, p, state, lengths, reverse):
        like = _cast_to(layer_input.dtype)  # autocast's dtype, see _run_layers
        bias = like(p["b_ih"] + p["b_hh"]) if "b_ih" in p else None  # summed at full precision
        w_hh = features.dropped_weight(p["w_hh"], self.toolkit.weight_drop, self.training)
        return ops.lstm_layer(layer_input, like(p["w_ih"]), bias, like(w_hh),
                              like(p.get("w_hr")), state[0], state[1], lengths, reverse,
                              layer_norm=features.layer_norm_pairs(p, like),
                              **self._toolkit_arguments(layer_input, state))


class _HiddenStateOnly(_FusedRNNBase):
    """What GRU and RNN share: one state, h, with torch.nn's checks of it."""

    _STATE_NAMES = ("h_0",)
    _STATE_SIZE_MESSAGES = ("Expected hidden size {}, got {}",)

    def __init__(self, mode, *args, **kwargs):
        if "proj_size" in kwargs:  # torch.nn.GRU's and RNN's own check
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__(mode, *args, **kwargs)

    def _state_sizes(self):
        return (self.hidden_size,)

    def _expected_state_sizes(self, x, batch_sizes):
        return (self.get_expected_hidden_size(x, batch_sizes),)

    def _user_states(self, hx, batched: bool, packed: bool) -> list:
        if packed:  # torch.nn checks no rank on a PackedSequence; the size check does
            checks.require_tensor(hx, f"{self._TORCH_NAME} hx (h_0)")
        else:
            checks.check_hidden_state_rank(hx, batched, self._TORCH_NAME)
        return [hx if batched else hx.unsqueeze(1)]

    @staticmethod
    def _check_hx_form(hx, batched: bool) -> None:
        pass

    @staticmethod
    def _pack_states(finals):
        return finals[0]


class GRU(_HiddenStateOnly):
    """Drop-in for :class:`torch.nn.GRU`: ``GRU(input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None)``, same parameters and returns."""

    _TORCH_NAME = "GRU"
    _AUTOCASTS_FP32_ON_CPU = False

    def __init__(self, *args, **kwargs):
        super().__init__("GRU", *args, **kwargs)

    def _run_layer(self, layer_input, p, state, lengths, reverse):
        like = _cast_to(layer_input.dtype)  # autocast's dtype, see _run_layers
        w_hh = features.dropped_weight(p["w_hh"], self.toolkit.weight_drop, self.training)
        return ops.gru_layer(layer_input, like(p["w_ih"]), like(p.get("b_ih")), like(w_hh),
                             like(p.get("b_hh")), state[0], lengths, reverse,
                             layer_norm=features.layer_norm_pairs(p, like),
                             **self._toolkit_arguments(layer_input, state))


_RNN_MODES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}


class RNN(_HiddenStateOnly):
    """Drop-in for :class:`torch.nn.RNN` (Elman): ``RNN(input_size, hidden_size,
    num_layers=1, nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None)``, same parameters and returns; takes
    the toolkit keywords a GRU takes (``weight_drop``, ``zoneout`` (z_h),
    ``recurrent_dropout``, ``grad_clip``, ``layer_norm``)."""

    _TORCH_NAME = "RNN"
    _AUTOCASTS_FP32_ON_CPU = True

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN's own reading: nonlinearity is the fourth positional argument
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in _RNN_MODES:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' "
                             "or 'relu'.")
        super().__init__(_RNN_MODES[self.nonlinearity], *args, **kwargs)

    def _run_layer(self, layer_input, p, state, lengths, reverse):
        like = _cast_to(layer_input.dtype)  # autocast's dtype, see _run_layers
        bias = like(p["b_ih"] + p["b_hh"]) if "b_ih" in p else None  # summed at full precision
        w_hh = features.dropped_weight(p["w_hh"], self.toolkit.weight_drop, self.training)
        return ops.rnn_layer(layer_input, like(p["w_ih"]), bias, like(w_hh), state[0], lengths,
                             reverse, nonlinearity=self.nonlinearity,
                             layer_norm=features.layer_norm_pairs(p, like),
                             **self._toolkit_arguments(layer_input, state))


# --------------------------------------------------------------------- cells


class _FusedCell:
    """What fusedrnn's cells change in torch.nn's: forward runs the layer op for one step.

    The constructor is torch.nn's; where its error does not name the argument,
    fusedrnn adds which one it was. The toolkit keywords the cells take
    (``_TOOLKIT``; features.py) are stored as ``self.toolkit``."""

    _TOOLKIT: tuple = ()
    _MODE: str  # torch.nn's mode of the layer the cell is one step of
    _HIDDEN_FIRST: bool  # whether torch.nn's cell multiplies h before the input (checks)
    _AUTOCASTS_FP32 = False  # whether autocast computes torch.nn's cell in bf16 from fp32

    def __init__(self, *args, toolkit: dict, **kwargs):
        mode = self._MODE
        self.toolkit = features.pop_toolkit(mode, toolkit, allowed=self._TOOLKIT)
        try:
            super().__init__(*args, **kwargs)
        except (TypeError, RuntimeError) as exc:
            detail = checks.constructor_detail(exc, _int_arguments(self, ("input_size",
                                                                           "hidden_size")))
            if not detail:
                raise
            raise type(exc)(f"{exc} ({detail})") from None
        if self.toolkit.forget_bias is not None and not self.bias:
            raise ValueError("fusedrnn: forget_bias needs bias=True")
        self._norm_roles = []  # layer_norm's LayerNorms: (role, name)
        if self.toolkit.layer_norm:
            (self._norm_roles,) = features.add_layer_norms(self, [""], mode)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        toolkit = self.__dict__.get("toolkit")
        if toolkit is not None and toolkit.forget_bias is not None:
            features.init_forget_bias(self, self.hidden_size, toolkit.forget_bias,
                                      ("bias_ih", "bias_hh"))
        features.reset_layer_norms(self)

    def extra_repr(self) -> str:
        toolkit = self.toolkit.describe()
        return super().extra_repr() + (", " + toolkit if toolkit else "")

    def _layer_norm(self, cast) -> tuple | None:
        """The ops' ``layer_norm`` argument (features.layer_norm_pairs), or None."""
        return features.layer_norm_pairs({role: getattr(self, name)
                                          for role, name in self._norm_roles}, cast)

    def _toolkit_arguments(self, x: Tensor) -> dict:
        """The toolkit's op arguments for this step (zoneout masks drawn now); ``x`` is
        the (1, B, I) input."""
        return features.layer_arguments(self.toolkit, self.training, 1, x.shape[1],
                                        self.hidden_size, self.hidden_size, x,
                                        lstm=self._MODE == "LSTM")

    def _check_settings(self) -> None:
        """What torch.nn's cell checks of itself after the ranks, before the sizes."""

    def _prepare(self, input: Tensor, hx, weight_ih: Tensor):
        """torch.nn's checks in its order; returns the input as a 1-step sequence, the
        states, whether the input is unbatched and the dtype of the results.
        ``weight_ih`` is the weight as the call reads it (a parametrization runs once)."""
        name, lstm = type(self).__name__, self._MODE == "LSTM"
        checks.check_cell_input_rank(name, input)
        if hx is not None:
            checks.check_cell_hx_ranks(name, hx, lstm)
        self._check_settings()
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
            states = [zeros] * (2 if lstm else 1)
        else:
            states = checks.cell_states(hx, batched, lstm)
        checks.check_cell_sizes(x, states, self.input_size, self.hidden_size)
        result_dtype = checks.check_cell_dtypes(x, states, weight_ih, hx is not None,
                                               hidden_first=self._HIDDEN_FIRST)
        autocast = ops.autocast_dtype(x, casts_fp32=self._AUTOCASTS_FP32)
        dtype = autocast or weight_ih.dtype
        result_dtype = autocast or result_dtype
        x = _cast_to(dtype)(x)
        states = [_cast_to(dtype)(s) for s in states]  # c_0 of another dtype
        return x.unsqueeze(0), states, not batched, result_dtype


def _refuse_unknown(cell, kwargs: dict) -> None:
    """Python's own error for a keyword the cell does not take."""
    if kwargs:
        raise TypeError(f"{type(cell).__name__}.__init__() got an unexpected keyword argument "
                        f"'{next(iter(kwargs))}'")


class LSTMCell(_FusedCell, torch.nn.LSTMCell):
    """Drop-in for :class:`torch.nn.LSTMCell` (and an instance of it); takes the toolkit
    keywords ``forget_bias``, ``cell_clip``, ``zoneout`` and ``layer_norm`` (features.py;
    its parameters ``layer_norm_{ih,hh,c}.weight/bias``)."""

    _TOOLKIT = ("forget_bias", "cell_clip", "zoneout", "layer_norm")
    _MODE, _HIDDEN_FIRST = "LSTM", True

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, **toolkit):
        super().__init__(input_size, hidden_size, bias, device, dtype, toolkit=toolkit)
        _refuse_unknown(self, toolkit)

    def forward(self, input, hx=None):
        weight_ih = self.weight_ih
        x, (h0, c0), unbatched, result_dtype = self._prepare(input, hx, weight_ih)
        like = _cast_to(x.dtype)  # autocast's dtype, see _prepare
        bias = like(self.bias_ih + self.bias_hh) if self.bias else None  # at full precision
        _, h, c = ops.lstm_layer(x, like(weight_ih), bias, like(self.weight_hh), None, h0, c0,
                                 layer_norm=self._layer_norm(like),
                                 **self._toolkit_arguments(x))
        if result_dtype != h.dtype:
            h, c = h.to(result_dtype), c.to(result_dtype)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class GRUCell(_FusedCell, torch.nn.GRUCell):
    """Drop-in for :class:`torch.nn.GRUCell` (and an instance of it); takes the toolkit
    keywords ``zoneout`` (z_h) and ``layer_norm`` (features.py)."""

    _TOOLKIT = ("zoneout", "layer_norm")
    _MODE, _HIDDEN_FIRST = "GRU", False

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, **toolkit):
        super().__init__(input_size, hidden_size, bias, device, dtype, toolkit=toolkit)
        _refuse_unknown(self, toolkit)

    def forward(self, input, hx=None):
        weight_ih = self.weight_ih
        x, (h0,), unbatched, _ = self._prepare(input, hx, weight_ih)
        like = _cast_to(x.dtype)  # autocast's dtype, see _prepare
        _, h = ops.gru_layer(x, like(weight_ih), like(self.bias_ih), like(self.weight_hh),
                             like(self.bias_hh), h0,
                             layer_norm=self._layer_norm(like),
                             **self._toolkit_arguments(x))
        return h.squeeze(0) if unbatched else h


class RNNCell(_FusedCell, torch.nn.RNNCell):
    """Drop-in for :class:`torch.nn.RNNCell` (and an instance of it): ``RNNCell(input_size,
    hidden_size, bias=True, nonlinearity='tanh', device=None, dtype=None)``; takes the
    toolkit keywords ``zoneout`` (z_h) and ``layer_norm`` (features.py)."""

    _TOOLKIT = ("zoneout", "layer_norm")
    # The mode only serves the toolkit's checks, alike for both nonlinearities (torch.nn
    # checks the nonlinearity itself in forward: _check_settings).
    _MODE, _HIDDEN_FIRST = "RNN_TANH", True
    _AUTOCASTS_FP32 = True  # torch.nn's RNNCell is two linears: autocast casts them

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, **toolkit):
        super().__init__(input_size, hidden_size, bias, nonlinearity, device, dtype,
                         toolkit=toolkit)
        _refuse_unknown(self, toolkit)

    def _check_settings(self) -> None:
        if self.nonlinearity not in _RNN_MODES:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")

    def forward(self, input, hx=None):
        weight_ih = self.weight_ih
        x, (h0,), unbatched, _ = self._prepare(input, hx, weight_ih)
        like = _cast_to(x.dtype)  # autocast's dtype, see _prepare
        bias = like(self.bias_ih + self.bias_hh) if self.bias else None  # at full precision
        _, h = ops.rnn_layer(x, like(weight_ih), bias, like(self.weight_hh), h0,
                             nonlinearity=self.nonlinearity, layer_norm=self._layer_norm(like),
                             **self._toolkit_arguments(x))
        return h.squeeze(0) if unbatched else h
