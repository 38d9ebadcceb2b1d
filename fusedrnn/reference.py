"""Pure-PyTorch oracle for fusedrnn.

Written with plain torch ops, one time step at a time, so that autograd
differentiates it and nobody has to trust our kernels to check our kernels.
The layer functions have exactly the contract of the fused ops
(``fusedrnn.ops``): one layer, one direction, time-major input.

Conventions shared with the kernels:
  * gate order ``i, f, g, o`` (LSTM) and ``r, z, n`` (GRU), as in torch.nn; the
    Elman RNN (torch.nn.RNN) has one gate, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``
    with act tanh or relu;
  * the input projection ``xproj = x @ w_ih^T + b`` is ``(T, B, G*H)``; for
    LSTM and RNN ``b`` is ``b_ih + b_hh``, for GRU only ``b_ih`` (``b_hh`` enters
    inside ``r * (W_hn h + b_hn)``);
  * ``lengths`` (``(B,)`` integers) marks steps ``t >= lengths[b]`` inactive:
    the state is carried through unchanged and the output there is zero;
  * ``reverse`` runs the steps from ``T - 1`` down to ``0``; with lengths a
    sequence starts at its own last step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def lstm_cell(xproj_t: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, w_hr: Tensor | None,
              cell_clip: float | None = None, recurrent_mask: Tensor | None = None,
              norm_hh: tuple | None = None, norm_c: tuple | None = None):
    """One LSTM step. ``xproj_t`` is ``(B, 4H)``; returns ``(h', c')``. ``cell_clip``
    clamps c' before h' = o * tanh(c'); ``recurrent_mask`` multiplies h where it
    enters the recurrent product only; ``norm_hh`` / ``norm_c`` (layer_norm: a
    (gain, bias) pair each) normalise the recurrent product and, before the tanh, c'."""
    h_in = h if recurrent_mask is None else h * recurrent_mask
    gates = xproj_t + _layer_norm(h_in @ w_hh.t(), norm_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c_new = f * c + i * g
    if cell_clip is not None:
        c_new = c_new.clamp(-cell_clip, cell_clip)
    h_new = o * _layer_norm(c_new, norm_c).tanh()
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def gru_cell(xproj_t: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
             recurrent_mask: Tensor | None = None, norm_hh: tuple | None = None):
    """One GRU step. ``xproj_t`` is ``(B, 3H)`` including ``b_ih``; returns ``h'``.
    ``recurrent_mask`` multiplies h where it enters the recurrent product only;
    ``norm_hh`` (layer_norm) normalises the recurrent product before b_hh is added."""
    hh = _layer_norm((h if recurrent_mask is None else h * recurrent_mask) @ w_hh.t(), norm_hh)
    if b_hh is not None:
        hh = hh + b_hh
    x_r, x_z, x_n = xproj_t.chunk(3, dim=-1)
    h_r, h_z, h_n = hh.chunk(3, dim=-1)
    r = (x_r + h_r).sigmoid()
    z = (x_z + h_z).sigmoid()
    n = (x_n + r * h_n).tanh()
    return n + z * (h - n)


_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_cell(xproj_t: Tensor, h: Tensor, w_hh: Tensor, nonlinearity: str = "tanh",
             recurrent_mask: Tensor | None = None, norm_hh: tuple | None = None):
    """One Elman RNN step. ``xproj_t`` is ``(B, H)`` including ``b_ih + b_hh``; returns
    ``h' = act(xproj_t + LN_hh(h W_hh^T))``, act ``nonlinearity`` (tanh or relu);
    ``recurrent_mask`` multiplies h where it enters the recurrent product only."""
    h_in = h if recurrent_mask is None else h * recurrent_mask
    return _ACTIVATIONS[nonlinearity](xproj_t + _layer_norm(h_in @ w_hh.t(), norm_hh))


# ------------------------------------------------------------ layer norm
# The toolkit's layer_norm, in haste's form: LayerNorms on the input part
# W_ih x and on the recurrent part W_hh h of the gate pre-activations, the
# RNN's biases added after, and (LSTM) on the cell state before the output's
# tanh. Each norm is a (gain, bias) pair over its whole vector.

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; the kernels' (norm_rows.h)


def _layer_norm(v: Tensor, gain_bias: tuple | None) -> Tensor:
    if gain_bias is None:
        return v
    return torch.nn.functional.layer_norm(v, (v.shape[-1],), *gain_bias, LAYER_NORM_EPS)


def normed_projection(x: Tensor, w_ih: Tensor, bias: Tensor | None, norm_ih: tuple) -> Tensor:
    """The input side of a layer-normalised layer, for all steps: LN_ih(x @ w_ih^T) + bias."""
    xproj = _layer_norm(torch.nn.functional.linear(x, w_ih), norm_ih)
    return xproj if bias is None else xproj + bias


def _steps(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def _active_rows(lengths: Tensor | None, t: int, like: Tensor) -> Tensor | None:
    if lengths is None:
        return None
    return (lengths.to(like.device) > t).unsqueeze(-1)


class _ClampGrad(torch.autograd.Function):
    """Identity forward; the gradient clamped elementwise to [-limit, limit] (grad_clip).
    Its tangent is the input's (grad_clip acts in the backward only)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, limit):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.limit = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(-ctx.limit, ctx.limit), None

    @staticmethod
    def jvp(ctx, x_tangent, _limit_tangent):
        return x_tangent.view_as(x_tangent)


def _clip_grad(state: Tensor, limit: float | None) -> Tensor:
    """``state`` as one step uses it: with grad_clip, the gradient this step sends back
    into it is clamped (before the output's gradient at the step before is added)."""
    return state if limit is None else _ClampGrad.apply(state, limit)


def _zoneout(weight: Tensor | None, t: int, previous: Tensor, new: Tensor) -> Tensor:
    """Zoneout: ``d * previous + (1 - d) * new`` with d the step's weight (a 0/1 draw in
    training, the probability in eval), or ``new`` without zoneout."""
    if weight is None:
        return new
    d = weight[t]
    return d * previous + (1 - d) * new


def _commit(active, new: Tensor, old: Tensor) -> tuple:
    """(state, output) after a step: inactive rows carry ``old`` and output zero."""
    if active is None:
        return new, new
    return torch.where(active, new, old), torch.where(active, new, torch.zeros_like(new))


def lstm_layer(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths=None, reverse=False, *,
               recurrent_mask=None, zoneout_h=None, zoneout_c=None, cell_clip=None,
               grad_clip=None, layer_norm=None):
    """One LSTM layer in one direction: ``(output, h_n, c_n)``. ``bias`` is
    ``b_ih + b_hh`` or None. The keywords are the toolkit's (fusedrnn/features.py):
    ``recurrent_mask`` (B, P), ``zoneout_h`` (T, B, P) and ``zoneout_c`` (T, B, H) the
    weights of the previous state, ``cell_clip``, ``grad_clip``, and ``layer_norm``:
    the (gain, bias) pairs of the norms on the input part, the recurrent part and the
    cell, ``(norm_ih, norm_hh, norm_c)``."""
    toolkit = dict(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c,
                   cell_clip=cell_clip, grad_clip=grad_clip)
    if layer_norm is None:
        xproj = torch.nn.functional.linear(x, w_ih, bias)
        return _lstm_steps(xproj, w_hh, w_hr, h0, c0, lengths, reverse, **toolkit)
    norm_ih, norm_hh, norm_c = layer_norm
    return _lstm_steps(normed_projection(x, w_ih, bias, norm_ih), w_hh, w_hr, h0, c0, lengths,
                       reverse, norm_hh=norm_hh, norm_c=norm_c, **toolkit)


def lstm_norm_recurrence(xproj, w_hh, hh_weight, hh_bias, c_weight, c_bias, h0, c0,
                         lengths=None, reverse=False, **toolkit):
    """The recurrence of a layer-normalised LSTM layer from its input side ``xproj``
    (:func:`normed_projection`): the contract of the op ``lstm_norm_forward``."""
    return _lstm_steps(xproj, w_hh, None, h0, c0, lengths, reverse,
                       norm_hh=(hh_weight, hh_bias), norm_c=(c_weight, c_bias), **toolkit)


def _lstm_steps(xproj, w_hh, w_hr, h0, c0, lengths, reverse, *, recurrent_mask=None,
                zoneout_h=None, zoneout_c=None, cell_clip=None, grad_clip=None, norm_hh=None,
                norm_c=None):
    h, c = h0, c0
    outputs = [None] * xproj.shape[0]
    for t in _steps(xproj.shape[0], reverse):
        h_in, c_in = _clip_grad(h, grad_clip), _clip_grad(c, grad_clip)
        h_new, c_new = lstm_cell(xproj[t], h_in, c_in, w_hh, w_hr, cell_clip, recurrent_mask,
                                 norm_hh, norm_c)
        h_new = _zoneout(zoneout_h, t, h_in, h_new)
        c_new = _zoneout(zoneout_c, t, c_in, c_new)
        active = _active_rows(lengths, t, h)
        h, outputs[t] = _commit(active, h_new, h_in)
        c, _ = _commit(active, c_new, c_in)
    if not outputs:
        return xproj.new_zeros(0, h0.shape[0], h0.shape[1]), h, c
    return torch.stack(outputs), h, c


def gru_layer(x, w_ih, b_ih, w_hh, b_hh, h0, lengths=None, reverse=False, *,
              recurrent_mask=None, zoneout_h=None, grad_clip=None, layer_norm=None):
    """One GRU layer, one direction: ``(output, h_n)``; the keywords as in
    :func:`lstm_layer` (``layer_norm`` is ``(norm_ih, norm_hh)``)."""
    toolkit = dict(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, grad_clip=grad_clip)
    if layer_norm is None:
        xproj = torch.nn.functional.linear(x, w_ih, b_ih)
        return _gru_steps(xproj, w_hh, b_hh, h0, lengths, reverse, **toolkit)
    norm_ih, norm_hh = layer_norm
    return _gru_steps(normed_projection(x, w_ih, b_ih, norm_ih), w_hh, b_hh, h0, lengths,
                      reverse, norm_hh=norm_hh, **toolkit)


def gru_norm_recurrence(xproj, w_hh, b_hh, hh_weight, hh_bias, h0, lengths=None,
                        reverse=False, **toolkit):
    """The recurrence of a layer-normalised GRU layer from its input side ``xproj``:
    the contract of the op ``gru_norm_forward``."""
    return _gru_steps(xproj, w_hh, b_hh, h0, lengths, reverse, norm_hh=(hh_weight, hh_bias),
                      **toolkit)


def _gru_steps(xproj, w_hh, b_hh, h0, lengths, reverse, *, recurrent_mask=None,
               zoneout_h=None, grad_clip=None, norm_hh=None):
    def cell(x_t, h):
        return gru_cell(x_t, h, w_hh, b_hh, recurrent_mask, norm_hh)
    return _hidden_state_steps(cell, xproj, h0, lengths, reverse, zoneout_h, grad_clip)


def _hidden_state_steps(cell, xproj, h0, lengths, reverse, zoneout_h, grad_clip):
    """The step loop of a cell whose one state is h (GRU, RNN): ``cell(xproj_t, h)``."""
    h = h0
    outputs = [None] * xproj.shape[0]
    for t in _steps(xproj.shape[0], reverse):
        h_in = _clip_grad(h, grad_clip)
        h_new = _zoneout(zoneout_h, t, h_in, cell(xproj[t], h_in))
        h, outputs[t] = _commit(_active_rows(lengths, t, h), h_new, h_in)
    if not outputs:
        return xproj.new_zeros(0, h0.shape[0], h0.shape[1]), h
    return torch.stack(outputs), h


def rnn_layer(x, w_ih, bias, w_hh, h0, lengths=None, reverse=False, *, nonlinearity="tanh",
              recurrent_mask=None, zoneout_h=None, grad_clip=None, layer_norm=None):
    """One Elman RNN layer, one direction: ``(output, h_n)``. ``bias`` is ``b_ih + b_hh``
    or None; the keywords as in :func:`lstm_layer` (``layer_norm`` is
    ``(norm_ih, norm_hh)``)."""
    toolkit = dict(recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, grad_clip=grad_clip)
    if layer_norm is None:
        xproj = torch.nn.functional.linear(x, w_ih, bias)
        return _rnn_steps(xproj, w_hh, h0, lengths, reverse, nonlinearity, **toolkit)
    norm_ih, norm_hh = layer_norm
    return _rnn_steps(normed_projection(x, w_ih, bias, norm_ih), w_hh, h0, lengths, reverse,
                      nonlinearity, norm_hh=norm_hh, **toolkit)


def rnn_norm_recurrence(xproj, w_hh, hh_weight, hh_bias, h0, lengths=None, reverse=False, *,
                        nonlinearity="tanh", **toolkit):
    """The recurrence of a layer-normalised RNN layer from its input side ``xproj``: the
    contract of the ops ``rnn_tanh_norm_forward`` / ``rnn_relu_norm_forward``."""
    return _rnn_steps(xproj, w_hh, h0, lengths, reverse, nonlinearity,
                      norm_hh=(hh_weight, hh_bias), **toolkit)


def _rnn_steps(xproj, w_hh, h0, lengths, reverse, nonlinearity, *, recurrent_mask=None,
               zoneout_h=None, grad_clip=None, norm_hh=None):
    def cell(x_t, h):
        return rnn_cell(x_t, h, w_hh, nonlinearity, recurrent_mask, norm_hh)
    return _hidden_state_steps(cell, xproj, h0, lengths, reverse, zoneout_h, grad_clip)


def rnn(mode, input, hx, weights, *, num_layers, bidirectional, lengths=None,
        dropout=0.0, training=False):
    """Whole multi-layer RNN on time-major ``input`` ``(T, B, I)``.

    ``mode`` is torch.nn's: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``.
    ``weights`` is the per-(layer, direction) list of parameter lists in
    torch.nn's order (``module._all_weights``). ``hx`` is ``h0`` (GRU, RNN) or
    ``(h0, c0)`` (LSTM), each ``(num_layers * D, B, *)``. Returns
    ``(output, h_n)`` or ``(output, (h_n, c_n))`` like torch.nn.
    """
    D = 2 if bidirectional else 1
    h0, c0 = hx if mode == "LSTM" else (hx, None)
    layer_input = input
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, *rest = weights[k]
            b_ih, b_hh, w_hr = _split_rest(rest)
            if mode == "LSTM":
                b = None if b_ih is None else b_ih + b_hh
                out, h, c = lstm_layer(layer_input, w_ih, b, w_hh, w_hr, h0[k], c0[k], lengths,
                                       d == 1)
                c_n.append(c)
            elif mode == "GRU":
                out, h = gru_layer(layer_input, w_ih, b_ih, w_hh, b_hh, h0[k], lengths, d == 1)
            else:
                b = None if b_ih is None else b_ih + b_hh
                out, h = rnn_layer(layer_input, w_ih, b, w_hh, h0[k], lengths, d == 1,
                                   nonlinearity=mode.removeprefix("RNN_").lower())
            outs.append(out)
            h_n.append(h)
        layer_input = torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, True)
    h_n = torch.stack(h_n)
    if mode == "LSTM":
        return layer_input, (h_n, torch.stack(c_n))
    return layer_input, h_n


def _split_rest(rest):
    """Split the parameters after ``w_ih, w_hh`` into ``(b_ih, b_hh, w_hr)``."""
    b_ih = b_hh = w_hr = None
    if len(rest) in (2, 3):
        b_ih, b_hh = rest[0], rest[1]
        rest = rest[2:]
    if rest:
        w_hr = rest[0]
    return b_ih, b_hh, w_hr


# ----------------------------------------------------------- whole module


def module_forward(module, input, hx=None):
    """``module``'s forward computed by :func:`rnn` with ``module``'s own parameters.

    ``module`` is a ``torch.nn.LSTM``/``GRU``/``RNN`` or a fusedrnn one. Takes the
    inputs torch.nn takes: batched (time- or batch-first), unbatched, or a
    PackedSequence (the output is packed the same way), and returns what
    torch.nn returns.
    """
    mode = module.mode  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (set by RNNBase)
    D = 2 if module.bidirectional else 1
    lengths = None
    packed = isinstance(input, PackedSequence)
    if packed:
        x, lengths = pad_packed_sequence(input)
    elif input.dim() == 2:
        x = input.unsqueeze(1)
    else:
        x = input.transpose(0, 1) if module.batch_first else input
    unbatched = not packed and input.dim() == 2
    sizes = [module.proj_size or module.hidden_size, module.hidden_size]
    sizes = sizes if mode == "LSTM" else sizes[:1]
    if hx is None:
        states = [x.new_zeros(module.num_layers * D, x.shape[1], s) for s in sizes]
    else:
        states = list(hx) if mode == "LSTM" else [hx]
        states = [s.unsqueeze(1) for s in states] if unbatched else states
    out, h = rnn(mode, x, tuple(states) if mode == "LSTM" else states[0],
                 module.all_weights, num_layers=module.num_layers,
                 bidirectional=module.bidirectional, lengths=lengths,
                 dropout=module.dropout, training=module.training)
    finals = list(h) if mode == "LSTM" else [h]
    if packed:
        order = input.sorted_indices
        if order is not None:
            out, lengths = out.index_select(1, order), lengths.index_select(0, order.cpu())
        data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
        out = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    elif unbatched:
        out, finals = out.squeeze(1), [f.squeeze(1) for f in finals]
    elif module.batch_first:
        out = out.transpose(0, 1)
    return out, (tuple(finals) if mode == "LSTM" else finals[0])


# ------------------------------------------------------------ tolerances
# The project's accuracy rule (docs/design.md, Tolerances), for the tests and
# the benchmark's correctness gate alike: the largest absolute error of every
# output, final state and gradient against torch.nn or this reference.

TOLERANCE = {torch.float64: 1e-10, torch.float32: 5e-5}  # fp64 always; fp32 at T <= 64


def low_precision_tolerance(torch_error: float) -> float:
    """The bound where no fixed one applies (fp16/bf16, and fp32 at longer T).

    No worse than twice torch.nn's own error in the same precision, both
    errors taken against the same higher-precision run of torch.nn.
    """
    return 2.0 * torch_error
