"""Streaming and truncated backpropagation through time.

* :class:`Stepping` gives ``fusedrnn.LSTM``, ``GRU`` and ``RNN`` their ``step``
  method: one time step of the whole stack, for online use (a sensor, a
  decoder) where the next input only exists once the last output is known.
* :func:`tbptt` runs a long sequence in chunks of ``k`` steps, carrying the
  state from chunk to chunk but cutting the graph between them: the loop of
  the classic word-language-model recipe, written once.

Both call the modules' own layer code (``_run_layers``), so every option of
the module (dropout between layers, autocast, the regularisers of the
toolkit) acts in them exactly as in a call of the module: a state carried
through ``step`` or across ``tbptt`` chunks gives the results of one long
call when nothing is detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops


class Stepping:
    """Mixin of fusedrnn's LSTM, GRU and RNN: ``step(x_t, state)``.

    ``step`` skips the argument checks of ``forward`` that a stream repeats
    at every step with the same result (torch.nn's long chain of checks
    costs more than the step itself at small sizes): it checks only what is
    cheap and what the op would not catch itself (the input's rank and width,
    the states' shapes); the op checks dtypes and devices.
    """

    def step(self, input: Tensor, state=None):
        """One time step: ``input`` is ``(batch, input_size)`` or unbatched
        ``(input_size,)``; ``state`` is what the module takes and returns as
        its state (LSTM ``(h, c)``, GRU and RNN ``h``, each ``(num_layers, batch, size)``
        or ``(num_layers, size)`` unbatched), or None for zeros.

        Returns ``(h_t, new_state)``: the last layer's output at this step,
        ``(batch, hidden)`` (``proj_size`` for an LSTM with a projection) or
        ``(hidden,)``, and the new state in the same layout as ``state``.
        ``out, state = rnn(x, state)`` over a sequence and ``step`` over its
        steps give the same results."""
        if self.bidirectional:
            raise RuntimeError(
                f"fusedrnn.{self._TORCH_NAME}.step: a bidirectional module cannot run one "
                "step at a time (its reverse direction starts from the end of the sequence); "
                "call the module on the whole sequence instead")
        if not isinstance(input, Tensor) or input.dim() not in (1, 2):
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"fusedrnn.{self._TORCH_NAME}.step: expected input of shape "
                             f"(batch, {self.input_size}) or ({self.input_size},), got {got}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.shape[-1]} (fusedrnn."
                               f"{self._TORCH_NAME}.step)")
        batched = input.dim() == 2
        x = input.unsqueeze(0) if batched else input.view(1, 1, -1)  # a 1-step sequence
        states = self._step_states(state, x, batched)
        h_t, finals = self._step_layers(x, states)
        if not batched:
            h_t, finals = h_t[0], [f.squeeze(1) for f in finals]
        return h_t, self._pack_states(finals)

    def _step_layers(self, x: Tensor, states: list):
        """``_run_layers`` for one step of one direction, without its generality: the
        same per-layer code (``_run_layer``, where the features act), autocast and
        dropout."""
        compute = ops.autocast_dtype(x, casts_fp32=self._AUTOCASTS_FP32_ON_CPU or x.is_cuda)
        if compute is not None:
            x, states = x.to(compute), [s.to(compute) for s in states]
        finals = [[] for _ in states]
        for layer in range(self.num_layers):  # unidirectional: layer-direction = layer
            out, *final = self._run_layer(x, self._layer_params(layer),
                                          [s[layer] for s in states], None, False)
            for acc, f in zip(finals, final):
                acc.append(f)
            x = out
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        stacked = [f[0].unsqueeze(0) if len(f) == 1 else torch.stack(f) for f in finals]
        return x[0], stacked

    def _step_states(self, state, x: Tensor, batched: bool) -> list:
        """The states as (num_layers, batch, size) tensors, shapes checked."""
        sizes = self._state_sizes()
        batch = x.shape[1]
        if state is None:
            return [x.new_zeros(self.num_layers, batch, size) for size in sizes]
        if self.mode == "LSTM" and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise TypeError(f"fusedrnn.LSTM.step: state must be a tuple (h, c) or None, "
                            f"got {type(state).__name__}")
        given = list(state) if self.mode == "LSTM" else [state]
        states = []
        for name, size, s in zip(self._STATE_NAMES, sizes, given):
            expected = (self.num_layers, batch, size) if batched else (self.num_layers, size)
            if not isinstance(s, Tensor) or tuple(s.shape) != expected:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise RuntimeError(f"Expected hidden size {expected}, got {got} "
                                   f"(fusedrnn.{self._TORCH_NAME}.step: {name})")
            states.append(s if batched else s.unsqueeze(1))
        return states


def _detached(state):
    """``state`` (a tensor, a tuple of tensors, or None) cut from its graph."""
    if state is None or isinstance(state, Tensor):
        return None if state is None else state.detach()
    return type(state)(_detached(s) for s in state)


def tbptt(rnn, x: Tensor, k: int, state=None):
    """Truncated backpropagation through time: yields ``(out_chunk, state)`` for
    consecutive chunks of ``k`` steps of ``x`` (the last chunk may be shorter).

    ``rnn`` is any module with torch.nn.LSTM/GRU/RNN's call (``fusedrnn`` or
    ``torch.nn``); ``x`` is a padded sequence, time along dimension 1 when
    ``rnn.batch_first`` and the input is batched, else dimension 0. Each chunk
    starts from the previous chunk's final state detached from the graph, so
    a backward pass after a chunk stops at the chunk's start. The yielded
    ``state`` is still attached (it can enter the loss)::

        for out, state in fusedrnn.tbptt(rnn, x, k=35):
            loss = criterion(head(out), target_chunk)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"fusedrnn.tbptt: k (steps per chunk) must be a positive int, got {k!r}")
    if not isinstance(x, Tensor) or x.dim() not in (2, 3):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError("fusedrnn.tbptt: x must be a (T, B, I), (B, T, I) with batch_first, "
                         f"or unbatched (T, I) tensor, got {got}")
    time_dim = 1 if x.dim() == 3 and getattr(rnn, "batch_first", False) else 0
    for chunk in torch.split(x, k, dim=time_dim):
        out, final = rnn(chunk, state)
        yield out, final
        state = _detached(final)  # after the caller's backward on this chunk
