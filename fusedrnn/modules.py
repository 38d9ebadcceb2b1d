"""fusedrnn.LSTM, GRU, LSTMCell and GRUCell: drop-ins for their torch.nn twins.

The classes derive from torch.nn's own bases (``RNNBase``, ``RNNCellBase``),
so constructor checks, parameter names, shapes, initialisation,
``state_dict``, ``flatten_parameters``, pickling and ``.to()`` are torch's
own. Only ``forward`` differs: each layer and direction runs one fused op
(``fusedrnn.ops``), with layers, directions, dropout and packing composed
here. (They deliberately do not derive from ``torch.nn.LSTM``/``GRU``:
torch.compile refuses to trace anything that is an instance of those.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.rnn import RNNBase, RNNCellBase
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import checks, ops


def _require_int(name: str, value, non_negative: bool = False) -> None:
    """Argument checks torch.nn's bases leave out (they fail later, unnamed)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")


class _FusedRNNBase(RNNBase):
    """Shared forward of LSTM and GRU: input forms, states, layers, directions."""

    def __init__(self, mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, proj_size, device, dtype):
        _require_int("num_layers", num_layers)
        _require_int("proj_size", proj_size)
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device=device, dtype=dtype)

    # The cell-specific parts -------------------------------------------------
    def _state_sizes(self) -> tuple:
        raise NotImplementedError

    def _run_layer(self, layer_input, params, state, lengths, reverse):
        raise NotImplementedError

    # -------------------------------------------------------------------------
    def _layer_params(self, k: int) -> dict:
        """Parameters of layer-direction ``k`` by role: w_ih, w_hh, b_ih, b_hh, w_hr."""
        names = self._all_weights[k]
        return {name.split("_l")[0].replace("weight_", "w_").replace("bias_", "b_"):
                getattr(self, name) for name in names}

    def forward(self, input, hx=None):
        name = type(self).__name__
        weight = self.weight_ih_l0
        packed = isinstance(input, PackedSequence)
        lengths = sorted_indices = None
        if packed:
            checks.check_packed(input)
            checks.check_floating_input("input", input.data, weight)
            checks.check_feature_size(name, input.data, self.input_size)
            sorted_indices = input.sorted_indices
            x, lengths = pad_packed_sequence(input)  # (T, B, I), batch in the caller's order
            unbatched = False
        else:
            checks.check_floating_input("input", input, weight)
            checks.check_input_rank(name, input, self.batch_first)
            checks.check_feature_size(name, input, self.input_size)
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)

        states = self._initial_states(hx, x, unbatched)
        output, finals = self._run_layers(x, states, lengths)

        if packed:
            output = self._repack(output, lengths, input)
        elif unbatched:
            output = output.squeeze(1)
            finals = [s.squeeze(1) for s in finals]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, self._pack_states(finals)

    def _initial_states(self, hx, x: Tensor, unbatched: bool) -> list:
        """The initial states as (L*D, B, size) tensors, checked and batched."""
        D = 2 if self.bidirectional else 1
        batch = x.shape[1]
        sizes = self._state_sizes()
        if hx is None:
            return [x.new_zeros(self.num_layers * D, batch, s) for s in sizes]
        tensors = self._unpack_states(hx)
        state_names = ("h_0", "c_0")
        result = []
        for state_name, state, size in zip(state_names, tensors, sizes):
            expected = (self.num_layers * D, size) if unbatched else (self.num_layers * D, batch, size)
            checks.check_state(state_name, state, expected, unbatched, self.weight_ih_l0)
            result.append(state.unsqueeze(1) if unbatched else state)
        return result

    def _run_layers(self, x: Tensor, states: list, lengths: Tensor | None):
        D = 2 if self.bidirectional else 1
        if lengths is not None:
            lengths = lengths.to(x.device)
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
        return layer_input, [torch.stack(f) for f in finals]

    @staticmethod
    def _repack(output: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
        """Pack ``output`` (batch in the caller's order) exactly as ``like`` is packed."""
        if like.sorted_indices is not None:
            output = output.index_select(1, like.sorted_indices)
            lengths = lengths.index_select(0, like.sorted_indices.cpu())
        data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
        return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.LSTM` (same arguments, parameters and returns)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)

    def _state_sizes(self):
        return (self.proj_size or self.hidden_size, self.hidden_size)

    @staticmethod
    def _unpack_states(hx):
        return checks.check_lstm_hx(hx)

    @staticmethod
    def _pack_states(finals):
        return finals[0], finals[1]

    def _run_layer(self, layer_input, p, state, lengths, reverse):
        bias = p["b_ih"] + p["b_hh"] if "b_ih" in p else None
        return ops.lstm_layer(layer_input, p["w_ih"], bias, p["w_hh"], p.get("w_hr"), state[0],
                              state[1], lengths, reverse)


class GRU(_FusedRNNBase):
    """Drop-in for :class:`torch.nn.GRU` (same arguments, parameters and returns)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype)

    def _state_sizes(self):
        return (self.hidden_size,)

    @staticmethod
    def _unpack_states(hx):
        return (checks.check_gru_hx(hx),)

    @staticmethod
    def _pack_states(finals):
        return finals[0]

    def _run_layer(self, layer_input, p, state, lengths, reverse):
        return ops.gru_layer(layer_input, p["w_ih"], p.get("b_ih"), p["w_hh"], p.get("b_hh"),
                             state[0], lengths, reverse)


# --------------------------------------------------------------------- cells


class _FusedCellBase(RNNCellBase):
    """A cell is the layer op run for a single step."""

    def __init__(self, input_size, hidden_size, bias, num_chunks, device, dtype):
        _require_int("input_size", input_size, non_negative=True)
        _require_int("hidden_size", hidden_size, non_negative=True)
        super().__init__(input_size, hidden_size, bias, num_chunks=num_chunks, device=device,
                         dtype=dtype)

    def _prepare(self, input: Tensor, hx, n_states: int):
        name = type(self).__name__
        checks.check_floating_input("input", input, self.weight_ih)
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: input must be 1-D (H_in) or 2-D (N, H_in), got a "
                             f"{input.dim()}-D tensor of shape {tuple(input.shape)}")
        checks.check_feature_size(name, input, self.input_size)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            states = [x.new_zeros(x.shape[0], self.hidden_size) for _ in range(n_states)]
        else:
            tensors = checks.check_lstm_hx(hx) if n_states == 2 else (checks.check_gru_hx(hx),)
            expected = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            states = []
            for state_name, state in zip(("h_0", "c_0"), tensors):
                checks.check_state(state_name, state, expected, unbatched, self.weight_ih)
                states.append(state.unsqueeze(0) if unbatched else state)
        return x.unsqueeze(0), states, unbatched  # x as a 1-step sequence


class LSTMCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.LSTMCell`."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        x, (h0, c0), unbatched = self._prepare(input, hx, 2)
        bias = self.bias_ih + self.bias_hh if self.bias else None
        _, h, c = ops.lstm_layer(x, self.weight_ih, bias, self.weight_hh, None, h0, c0)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


class GRUCell(_FusedCellBase):
    """Drop-in for :class:`torch.nn.GRUCell`."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input, hx=None):
        x, (h0,), unbatched = self._prepare(input, hx, 1)
        _, h = ops.gru_layer(x, self.weight_ih, self.bias_ih, self.weight_hh, self.bias_hh, h0)
        return h.squeeze(0) if unbatched else h
