"""Bad input: fusedrnn raises what torch.nn raises.

The tables below drive the same bad input through torch.nn and fusedrnn and
require an exception of torch's type (or a subclass) whose message contains
torch's message; fusedrnn may add its detail after it. A row says when
torch's words are incidental (they depend on which ATen path runs, oneDNN or
native, or on the meta device) and then only the type is compared. What
torch.nn accepts, fusedrnn accepts and computes the same; what fusedrnn
alone rejects is listed with the reason. Edge cases that are not errors
(empty batch, non-contiguous tensors) close the file; NaN and Inf have
tests/test_nan_inf.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import checks, ops
from conftest import TOL, assert_results_close, make_pair, run

F64, F32 = torch.float64, torch.float32
KINDS = ["LSTM", "GRU", "RNN"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]
z, r = torch.zeros, torch.randn


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def pack(lengths=(4, 2), features=3, sort=True):
    """A packed (T=4, N=len(lengths)) batch; ``sort=False`` packs it with sorted_indices."""
    lengths = torch.tensor(lengths if sort else lengths[::-1])
    return pack_padded_sequence(r(4, len(lengths), features), lengths, enforce_sorted=sort)


@dataclass
class Case:
    """One bad call: ``kind(*ctor, **kwargs)(*args())`` raises in torch.nn and fusedrnn."""

    id: str
    kind: str
    args: Callable
    kwargs: dict = field(default_factory=dict)
    ctor: tuple = (3, 5)
    # "torch": torch's message is contained in fusedrnn's. "padded": torch.nn.LSTM runs no
    # check on a PackedSequence, so the words are those it gives for the padded input. Any
    # other text: why torch's words are incidental (then only the type is compared).
    words: str = "torch"
    torch_crashes: bool = False  # torch.nn segfaults here: it is not called

    def call(self, lib, args=None):
        torch.manual_seed(0)
        module = getattr(lib, self.kind)(*self.ctor, **self.kwargs)
        return module(*(args if args is not None else self.args()))


def lstm_hx(h, c=None):
    return (h, h if c is None else c)


def gru_hx(h, c=None):
    return h


HX = {"LSTM": lstm_hx, "GRU": gru_hx, "RNN": gru_hx}
MATMUL = "torch's words come from the ATen path that happens to run (oneDNN or a matmul)"
META = "torch's words are those of a meta-device kernel"
PARSER = "torch's words list ATen's whole argument signature"


def module_cases(kind):
    hx, L2 = HX[kind], dict(num_layers=2)
    lstm = kind == "LSTM"
    cases = [
        Case("input-1d", kind, lambda: (r(3),)),
        Case("input-4d", kind, lambda: (r(4, 2, 2, 3),)),
        Case("input-0d", kind, lambda: (torch.tensor(1.0),)),
        Case("input-list", kind, lambda: ([[1.0, 2.0, 3.0]],)),
        Case("input-None", kind, lambda: (None,)),
        Case("input-int64", kind, lambda: (torch.ones(4, 2, 3, dtype=torch.int64),)),
        Case("input-float64", kind, lambda: (r(4, 2, 3, dtype=F64),)),
        Case("input-float16", kind, lambda: (r(4, 2, 3).half(),)),
        Case("input-complex", kind, lambda: (r(4, 2, 3, dtype=torch.complex64),)),
        Case("input-size", kind, lambda: (r(4, 2, 4),)),
        Case("input-size-unbatched", kind, lambda: (r(4, 4),)),
        Case("input-size-batch-first", kind, lambda: (r(2, 4, 4),), dict(batch_first=True)),
        Case("input-size-and-dtype", kind, lambda: (r(4, 2, 4, dtype=F64),)),  # dtype first
        Case("length-0", kind, lambda: (r(0, 2, 3),)),
        Case("length-0-unbatched", kind, lambda: (r(0, 3),)),
        Case("length-0-batch-first", kind, lambda: (r(2, 0, 3),), dict(batch_first=True)),
        Case("length-0-batch-0", kind, lambda: (r(0, 0, 3),)),
        Case("length-0-with-hx", kind, lambda: (r(0, 2, 3), hx(z(2, 2, 5))), L2),
        Case("length-0-before-h0-dtype", kind, lambda: (r(0, 2, 3), hx(z(2, 2, 5, dtype=F64))), L2),
        Case("h0-2d-batched", kind, lambda: (r(4, 2, 3), hx(z(2, 5))), L2),
        Case("h0-3d-unbatched", kind, lambda: (r(4, 3), hx(z(2, 1, 5))), L2),
        Case("h0-batch", kind, lambda: (r(4, 2, 3), hx(z(2, 7, 5))), L2),
        Case("h0-layers", kind, lambda: (r(4, 2, 3), hx(z(1, 2, 5), z(2, 2, 5))), L2),
        Case("h0-hidden", kind, lambda: (r(4, 2, 3), hx(z(2, 2, 4), z(2, 2, 5))), L2),
        Case("h0-unbatched", kind, lambda: (r(4, 3), hx(z(2, 4))), L2),
        Case("h0-shape-before-dtype", kind, lambda: (r(4, 2, 3), hx(z(2, 3, 5, dtype=F64))), L2),
        Case("h0-float64", kind, lambda: (r(4, 2, 3), hx(z(2, 2, 5, dtype=F64), z(2, 2, 5))), L2,
             words=MATMUL),
        Case("h0-int64", kind, lambda: (r(4, 2, 3), hx(z(2, 2, 5, dtype=torch.int64), z(2, 2, 5))),
             L2, words=MATMUL),
        Case("h0-float32-module-float64", kind,
             lambda: (r(4, 2, 3, dtype=F64), hx(z(2, 2, 5), z(2, 2, 5, dtype=F64))),
             dict(num_layers=2, dtype=F64), words=MATMUL),
        Case("h0-list", kind, lambda: (r(4, 2, 3), hx([[0.0] * 5] * 2, z(2, 2, 5))), L2),
        Case("input-meta", kind, lambda: (meta(4, 2, 3),)),
        Case("input-meta-length-0", kind, lambda: (meta(0, 2, 3),)),  # device first
        Case("h0-meta", kind, lambda: (r(4, 2, 3), hx(meta(2, 2, 5), z(2, 2, 5))), L2),
        Case("h0-meta-before-dtype", kind, lambda: (r(4, 2, 3), hx(meta(2, 2, 5, dtype=F64))), L2),
        Case("bidirectional-str", kind, lambda: (r(4, 2, 3),), dict(bidirectional="yes"),
             words=PARSER),
        Case("bidirectional-int", kind, lambda: (r(4, 2, 3),), dict(bidirectional=1), words=PARSER),
        Case("num-layers-bool", kind, lambda: (r(4, 2, 3),), dict(num_layers=True), words=PARSER),
        # packed input
        Case("packed-input-size", kind, lambda: (pack(features=4),), words="padded"),
        Case("packed-float64", kind, lambda: (pack(), ), dict(dtype=F64), words="padded"),
        Case("packed-h0-batch", kind, lambda: (pack(), hx(z(2, 3, 5))), L2, words="padded"),
        Case("packed-h0-hidden", kind, lambda: (pack(), hx(z(2, 2, 4))), L2, words="padded"),
        Case("packed-h0-layers", kind, lambda: (pack(), hx(z(1, 2, 5), z(2, 2, 5))), L2,
             words="padded"),
        Case("packed-h0-2d", kind, lambda: (pack(), hx(z(2, 5))), L2, words=(
            "torch.nn.LSTM: IndexError from inside ATen; torch.nn.GRU: its size check"
            if lstm else "torch")),
        Case("packed-h0-1d-unsorted", kind, lambda: (pack(sort=False), hx(z(5))), L2,
             words="torch's words come from index_select on the state"),
        Case("packed-h0-float64", kind, lambda: (pack(), hx(z(2, 2, 5, dtype=F64), z(2, 2, 5))), L2,
             words=MATMUL),
        Case("packed-h0-meta", kind, lambda: (pack(), hx(meta(2, 2, 5), z(2, 2, 5))), L2,
             words=META),
        Case("packed-empty", kind, lambda: (PackedSequence(r(0, 3), torch.tensor([]).long()),)),
        Case("packed-batch-sizes-increasing", kind,
             lambda: (PackedSequence(r(5, 3), torch.tensor([2, 3])),),
             words="torch's words come from a broadcast deep in ATen"),
        Case("packed-batch-sizes-int32", kind,
             lambda: (PackedSequence(r(5, 3), torch.tensor([3, 2], dtype=torch.int32)),)),
        Case("packed-data-3d", kind, lambda: (PackedSequence(r(5, 1, 3), torch.tensor([3, 2])),),
             words="torch.nn.LSTM: a broadcast deep in ATen" if lstm else "torch"),
    ]
    if kind == "GRU":
        # torch.nn.GRU: a positional 8th argument is RNNBase's proj_size; the forward fails
        cases.append(Case("positional-proj-size", kind, lambda: (r(4, 2, 3),),
                          ctor=(3, 5, 1, True, False, 0.0, False, 2)))
    if kind == "RNN":
        # torch.nn.RNN: nonlinearity is positional argument 4, so proj_size is the 9th
        cases.append(Case("positional-proj-size", kind, lambda: (r(4, 2, 3),),
                          ctor=(3, 5, 1, "relu", True, False, 0.0, False, 2)))
    if kind != "LSTM":
        cases.append(Case("hx-tuple", kind, lambda: (r(4, 2, 3), (z(1, 2, 5),))))
        cases.append(Case("packed-hx-tuple", kind, lambda: (pack(), (z(1, 2, 5),)),
                          words="torch's words name the first tensor method it calls"))
        return cases
    return cases + [
        Case("c0-2d-batched", kind, lambda: (r(4, 2, 3), (z(2, 2, 5), z(2, 5))), L2),
        Case("c0-hidden", kind, lambda: (r(4, 2, 3), (z(2, 2, 5), z(2, 2, 4))), L2),
        Case("c0-float64", kind, lambda: (r(4, 2, 3), (z(2, 2, 5), z(2, 2, 5, dtype=F64))), L2,
             words=MATMUL),
        Case("c0-meta", kind, lambda: (r(4, 2, 3), (z(2, 2, 5), meta(2, 2, 5))), L2),
        Case("h0-with-projection", kind, lambda: (r(4, 2, 3), (z(1, 2, 5), z(1, 2, 5))),
             dict(proj_size=2)),
        Case("hx-stacked-tensor-batched-3d", kind, lambda: (r(4, 2, 3), z(2, 2, 5)), L2),
        Case("hx-stacked-tensor-batched-4d", kind, lambda: (r(4, 2, 3), z(2, 2, 2, 5)), L2,
             words=PARSER),
        Case("hx-tuple-1", kind, lambda: (r(4, 2, 3), (z(2, 2, 5),)), L2),
        Case("hx-list-1", kind, lambda: (r(4, 2, 3), [z(2, 2, 5)]), L2),
        Case("hx-tuple-1-unbatched", kind, lambda: (r(4, 3), (z(2, 5),)), L2),
        Case("hx-tuple-3", kind, lambda: (r(4, 2, 3), (z(2, 2, 5),) * 3), L2),
        Case("hx-tuple-3-length-0", kind, lambda: (r(0, 2, 3), (z(2, 2, 5),) * 3), L2),
        Case("hx-tuple-3-meta", kind, lambda: (r(4, 2, 3), (meta(2, 2, 5),) * 3), L2),
        Case("c0-None", kind, lambda: (r(4, 2, 3), (z(2, 2, 5), None)), L2),
        Case("packed-hx-tuple-1", kind, lambda: (pack(), (z(2, 2, 5),)), L2,
             words="torch.nn.LSTM skips its checks on a PackedSequence; ATen counts the states"),
        Case("packed-hx-tuple-1-unsorted", kind, lambda: (pack(sort=False), (z(2, 2, 5),)), L2),
        Case("packed-hx-tuple-3", kind, lambda: (pack(), (z(2, 2, 5),) * 3), L2),
        Case("packed-h0-4d", kind, lambda: (pack(), lstm_hx(z(2, 2, 2, 5))), L2, torch_crashes=True,
             words="torch.nn.LSTM segfaults; the padded input gives a rank message"),
    ]


def cell_cases(kind):
    lstm = kind == "LSTMCell"
    hidden_first = kind != "GRUCell"
    hx = lstm_hx if lstm else gru_hx
    cases = [
        Case("input-0d", kind, lambda: (torch.tensor(1.0),)),
        Case("input-3d", kind, lambda: (r(4, 2, 3),)),
        Case("input-list", kind, lambda: ([[1.0, 2.0, 3.0]],)),
        Case("input-size", kind, lambda: (r(2, 4),)),
        Case("input-size-unbatched", kind, lambda: (r(4),)),
        Case("input-int64", kind, lambda: (torch.ones(2, 3, dtype=torch.int64),)),
        Case("input-float64", kind, lambda: (r(2, 3, dtype=F64),)),
        Case("input-float16", kind, lambda: (r(2, 3).half(),)),
        Case("input-size-before-dtype", kind, lambda: (r(2, 4, dtype=F64),)),
        Case("input-size-before-hidden-batch", kind, lambda: (r(2, 4), hx(z(3, 5)))),
        Case("cell-float64-h0-float32", kind,
             lambda: (r(2, 3, dtype=F64), hx(z(2, 5), z(2, 5, dtype=F64))),
             dict(dtype=F64)),
        Case("h0-batch", kind, lambda: (r(2, 3), hx(z(3, 5), z(2, 5)))),
        Case("h0-hidden", kind, lambda: (r(2, 3), hx(z(2, 4), z(2, 5)))),
        Case("h0-4d", kind, lambda: (r(2, 3), hx(z(1, 1, 2, 5)))),
        Case("h0-3d", kind, lambda: (r(2, 3), hx(z(1, 2, 5)))),
        Case("h0-0d", kind, lambda: (r(2, 3), hx(torch.tensor(0.0)))),
        Case("h0-1d-batched", kind, lambda: (r(2, 3), hx(z(5)))),
        Case("h0-1d-batched-same-batch", kind, lambda: (r(5, 3), hx(z(5)))),
        Case("h0-2d-unbatched", kind, lambda: (r(3), hx(z(1, 5)))),
        Case("h0-2d-unbatched-rows", kind, lambda: (r(3), hx(z(2, 5)))),
        Case("h0-unbatched-hidden", kind, lambda: (r(3), hx(z(4)))),
        Case("h0-float64", kind, lambda: (r(2, 3), hx(z(2, 5, dtype=F64), z(2, 5)))),
        Case("h0-int32", kind, lambda: (r(2, 3), hx(z(2, 5, dtype=torch.int32), z(2, 5)))),
        Case("h0-shape-before-dtype", kind, lambda: (r(2, 3), hx(z(3, 5, dtype=F64), z(2, 5)))),
        Case("h0-dtype-before-input-dtype", kind,
             lambda: (r(2, 3, dtype=F64), hx(z(2, 5, dtype=torch.float16), z(2, 5)))),
        # LSTMCell and RNNCell multiply the hidden state first, GRUCell the input
        Case("h0-dtype-and-input-device", kind,
             lambda: (meta(2, 3), hx(z(2, 5, dtype=F64), z(2, 5))),
             words="torch" if hidden_first else META),
        Case("input-meta", kind, lambda: (meta(2, 3),), words=META),
        Case("h0-meta", kind, lambda: (r(2, 3), hx(meta(2, 5), z(2, 5))), words=META),
        Case("h0-list", kind, lambda: (r(2, 3), hx([[0.0] * 5] * 2, z(2, 5)))),
    ]
    if kind == "RNNCell":  # torch.nn checks the nonlinearity in forward, after the ranks
        cases += [Case("nonlinearity-unknown", kind, lambda: (r(2, 3),),
                       ctor=(3, 5, True, "gelu")),
                  Case("nonlinearity-before-input-size", kind, lambda: (r(2, 4),),
                       ctor=(3, 5, True, "gelu"))]
    if not lstm:
        return cases + [Case("hx-tuple", kind, lambda: (r(2, 3), (z(2, 5),)))]
    return cases + [
        Case("c0-batch", kind, lambda: (r(2, 3), (z(2, 5), z(3, 5)))),
        Case("c0-hidden", kind, lambda: (r(2, 3), (z(2, 5), z(2, 4)))),
        Case("h0-before-c0", kind, lambda: (r(2, 3), (z(2, 4), z(3, 5)))),
        Case("c0-meta", kind, lambda: (r(2, 3), (z(2, 5), meta(2, 5))), words=META),
        Case("hx-tensor", kind, lambda: (r(2, 3), z(2, 5))),
        Case("hx-tensor-1d", kind, lambda: (r(2, 3), z(5))),
        Case("hx-tensor-4d", kind, lambda: (r(2, 3), z(2, 2, 1, 5))),
        Case("hx-tuple-1", kind, lambda: (r(2, 3), (z(2, 5),))),
        Case("hx-tuple-3", kind, lambda: (r(2, 3), (z(2, 5),) * 3)),
        Case("hx-tuple-3-rank-of-third", kind, lambda: (r(2, 3), (z(2, 5), z(2, 5), z(2, 5, 7)))),
        Case("hx-tuple-1-unbatched", kind, lambda: (r(3), (z(5),))),
        Case("hx-int", kind, lambda: (r(2, 3), 3)),
        Case("hx-str", kind, lambda: (r(2, 3), "ab")),
        Case("c0-None", kind, lambda: (r(2, 3), (z(2, 5), None))),
    ]


FORWARD_ERRORS = ([c for k in KINDS for c in module_cases(k)]
                  + [c for k in CELLS for c in cell_cases(k)])


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


def _padded_call(case):
    """torch.nn.LSTM on the padded form of the case's packed input (same states)."""
    packed, *rest = case.args()
    x, _ = pad_packed_sequence(packed)
    return case.call(torch.nn, (x, *rest))


@pytest.mark.parametrize("case", FORWARD_ERRORS, ids=[f"{c.kind}-{c.id}" for c in FORWARD_ERRORS])
def test_forward_error_like_torch(case):
    fused = _raised(lambda: case.call(fusedrnn))
    assert fused is not None, "fusedrnn accepted it"
    expected = None if case.torch_crashes else _raised(lambda: case.call(torch.nn))
    if not case.torch_crashes:
        assert expected is not None, "torch.nn accepted it: the case belongs to ACCEPTED"
        assert isinstance(fused, type(expected)), f"torch: {expected!r}\nfused: {fused!r}"
    if case.words == "padded" or case.torch_crashes:
        expected = _raised(lambda: _padded_call(case))
        assert isinstance(fused, type(expected)), f"torch (padded): {expected!r}\nfused: {fused!r}"
    if case.words in ("torch", "padded"):
        assert str(expected) in str(fused), f"torch: {expected}\nfused: {fused}"


# -------------------------------------------------------------- constructor

CTOR_ERRORS = [
    ("GRU", (3, 5), dict(proj_size=10)),
    ("GRU", (3, 5), dict(proj_size=0)),
    ("LSTM", (3, 5), dict(proj_size=5)),
    ("LSTM", (3, 5), dict(proj_size=7)),
    ("LSTM", (3, 5), dict(proj_size=-1)),
    ("LSTM", (3, 5), dict(proj_size=2.0)),
    ("LSTM", (3, 5), dict(proj_size=True)),
    ("LSTM", (3, 5), dict(num_layers=0)),
    ("GRU", (3, 5), dict(num_layers=-1)),
    ("LSTM", (3, 5), dict(num_layers=1.5)),
    ("GRU", (3, 5), dict(num_layers="2")),
    ("LSTM", (3, 5), dict(dropout=-0.1)),
    ("GRU", (3, 5), dict(dropout=1.5)),
    ("LSTM", (3, 5), dict(dropout=True)),
    ("LSTM", (3, 5), dict(dropout="0.1")),
    ("LSTM", (3, 0), {}),
    ("GRU", (3, -3), {}),
    ("LSTM", (0, 5), {}),
    ("GRU", (-1, 5), {}),
    ("LSTM", (3, 5.0), {}),
    ("LSTM", (3.0, 5), {}),
    ("GRU", ("10", 5), {}),
    ("LSTM", (np.int64(3), 5), {}),
    ("LSTM", (3, 5), dict(bias=1)),
    ("GRU", (3, 5), dict(bias="True")),
    ("GRU", (3, 5), dict(batch_first=0)),
    ("LSTM", (3, 5), dict(dtype=torch.int64)),
    ("GRU", (3, 5), dict(foo=1)),
    ("LSTM", (3, 5, 1, True, False, 0.0, False, 0, None, None, 1), {}),
    ("LSTMCell", (3, -1), {}),
    ("GRUCell", (-3, 5), {}),
    ("GRUCell", (3.0, 5), {}),
    ("LSTMCell", (3, 5), dict(proj_size=2)),
    ("GRUCell", (3, 5), dict(dtype=torch.int64)),
    ("RNN", (3, 5), dict(nonlinearity="gelu")),
    ("RNN", (3, 5, 1, "sigmoid"), {}),
    ("RNN", (3, 5), dict(proj_size=2)),
    ("RNN", (3, 5), dict(num_layers=0)),
    ("RNN", (3, 5), dict(dropout=2.0, nonlinearity="relu")),
    ("RNNCell", (3, 0.5), {}),
    ("RNNCell", (3, 5), dict(foo=1)),
]


@pytest.mark.parametrize("kind,args,kwargs", CTOR_ERRORS,
                         ids=[f"{k}{a}{kw}" for k, a, kw in CTOR_ERRORS])
def test_constructor_error_like_torch(kind, args, kwargs):
    expected = _raised(lambda: getattr(torch.nn, kind)(*args, **kwargs))
    fused = _raised(lambda: getattr(fusedrnn, kind)(*args, **kwargs))
    assert expected is not None and fused is not None, (expected, fused)
    assert isinstance(fused, type(expected)), f"torch: {expected!r}\nfused: {fused!r}"
    assert str(expected) in str(fused), f"torch: {expected}\nfused: {fused}"


@pytest.mark.parametrize("kind,args,kwargs,detail", [
    ("LSTM", (3, 5), dict(num_layers=1.5), "num_layers must be an int, got 1.5 (float)"),
    ("LSTM", (3, 5), dict(proj_size=2.0), "proj_size must be an int, got 2.0 (float)"),
    ("LSTMCell", (3, -1), {}, "hidden_size must be non-negative, got -1"),
    ("GRUCell", (3.0, 5), {}, "input_size must be an int, got 3.0 (float)"),
    ("LSTM", (3, 5), dict(num_layers=np.int64(2), proj_size=2.0),
     "proj_size must be an int, got 2.0 (float)"),
    ("LSTM", (3, 5), dict(proj_size=True), "proj_size must be an int, got True (bool)"),
])
def test_constructor_error_names_the_argument(kind, args, kwargs, detail):
    with pytest.raises((TypeError, RuntimeError)) as info:
        getattr(fusedrnn, kind)(*args, **kwargs)
    assert str(info.value).endswith(f"({detail})")


def test_fusedrnn_detail_follows_torch_words():
    """The detail names the argument and the shape it must have."""
    m = fusedrnn.LSTM(3, 5, num_layers=2)
    with pytest.raises(RuntimeError) as info:
        m(r(4, 2, 3), (z(2, 7, 5), z(2, 2, 5)))
    assert str(info.value) == (
        "Expected hidden[0] size (2, 2, 5), got [2, 7, 5] (h_0 must have shape "
        "(num_layers * num_directions, batch, hidden_size) = (2, 2, 5), got (2, 7, 5))")
    with pytest.raises(RuntimeError, match=r"\(c_0 must have shape \(num_layers \* num_directions, "
                                           r"hidden_size\) = \(2, 5\) for unbatched input, "
                                           r"got \(2, 4\)\)"):
        m(r(4, 3), (z(2, 5), z(2, 4)))
    with pytest.raises(RuntimeError,
                       match=r"input of shape \(4, 2, 4\), module built with input_size=3"):
        m(r(4, 2, 4))
    with pytest.raises(RuntimeError, match=r"\(h_0 must have shape \(2, 5\)\)$"):
        fusedrnn.GRUCell(3, 5)(r(2, 3), z(3, 5))


def test_checks_trace_under_torch_compile_fullgraph():
    """The checks are shape/dtype logic: states given, unbatched input, a promoted c_0."""
    torch._dynamo.reset()
    lstm, cell = fusedrnn.LSTM(3, 5, num_layers=2, batch_first=True), fusedrnn.LSTMCell(3, 5)
    calls = [(lstm, (r(2, 4, 3), (r(2, 2, 5), r(2, 2, 5)))), (lstm, (r(4, 3), (r(2, 5), r(2, 5)))),
             (cell, (r(3), (r(5), r(5, dtype=F64))))]
    for module, args in calls:
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        for a, e in zip(_flat(compiled(*args)), _flat(module(*args))):
            assert a.dtype == e.dtype
            torch.testing.assert_close(a, e, atol=0, rtol=0)


def test_exception_classes_are_both_types():
    assert issubclass(checks.NotATensorError, TypeError)
    assert issubclass(checks.NotATensorError, AttributeError)
    assert issubclass(checks.DtypeMismatchError, ValueError)
    assert issubclass(checks.DtypeMismatchError, RuntimeError)
    assert issubclass(checks.StateShapeError, RuntimeError)
    assert issubclass(checks.StateShapeError, IndexError)


# ------------------------------------------------- what torch.nn accepts too


@dataclass
class Accepted:
    id: str
    kind: str
    args: Callable
    kwargs: dict = field(default_factory=dict)
    ctor: tuple = (3, 5)
    tol: float = TOL[F64]
    native_torch: bool = False  # compare with torch.nn's native kernels (oneDNN off)


def r64(*shape):
    return r(*shape, dtype=F64)


ACCEPTED = [
    Accepted("LSTM-unbatched-hx-stacked-tensor", "LSTM", lambda: (r64(4, 3), r64(2, 2, 5)),
             dict(num_layers=2, dtype=F64)),
    Accepted("LSTM-unbatched-hx-3-tuple", "LSTM", lambda: (r64(4, 3), (r64(1, 5),) * 3),
             dict(dtype=F64)),
    Accepted("LSTM-float64-c0-float32", "LSTM", lambda: (r64(4, 2, 3), (r64(1, 2, 5), r(1, 2, 5))),
             dict(dtype=F64)),
    Accepted("LSTM-float32-c0-bfloat16", "LSTM",
             lambda: (r(4, 2, 3), (r(1, 2, 5), r(1, 2, 5).bfloat16())),
             tol=TOL[torch.float32], native_torch=True),
    Accepted("LSTM-float32-c0-int64", "LSTM",
             lambda: (r(4, 2, 3), (r(1, 2, 5), torch.ones(1, 2, 5).long())),
             tol=TOL[torch.float32], native_torch=True),
    Accepted("LSTM-num_layers-numpy", "LSTM", lambda: (r64(4, 2, 3),),
             dict(num_layers=np.int64(2), dtype=F64)),
    Accepted("LSTM-proj_size-0.0", "LSTM", lambda: (r64(4, 2, 3),), dict(proj_size=0.0, dtype=F64)),
    Accepted("LSTM-proj_size-numpy", "LSTM", lambda: (r64(4, 2, 3),),
             dict(proj_size=np.int64(2), dtype=F64)),
    Accepted("LSTM-hidden_size-True", "LSTM", lambda: (r64(4, 2, 3),), dict(dtype=F64),
             ctor=(3, True)),
    Accepted("LSTM-positional-device", "LSTM", lambda: (r(4, 2, 3),),
             ctor=(3, 5, 1, True, False, 0.0, False, 0, "cpu"), tol=TOL[torch.float32]),
    Accepted("GRU-positional-proj_size-0", "GRU", lambda: (r64(4, 2, 3),), dict(dtype=F64),
             ctor=(3, 5, 1, True, False, 0.0, False, 0)),
    Accepted("GRU-num_layers-tensor", "GRU", lambda: (r64(4, 2, 3),),
             dict(num_layers=torch.tensor(2), dtype=F64)),
    Accepted("GRU-dropout-numpy", "GRU", lambda: (r64(4, 2, 3),),
             dict(num_layers=2, dropout=np.float64(0.0), dtype=F64)),
    Accepted("LSTMCell-unbatched-hx-stacked-tensor", "LSTMCell", lambda: (r64(3), r64(2, 5)),
             dict(dtype=F64)),
    Accepted("LSTMCell-unbatched-hx-3-tuple", "LSTMCell", lambda: (r64(3), (r64(5),) * 3),
             dict(dtype=F64)),
    Accepted("LSTMCell-float32-c0-float64", "LSTMCell", lambda: (r(2, 3), (r(2, 5), r64(2, 5))),
             tol=TOL[torch.float32]),
    Accepted("LSTMCell-float32-c0-bfloat16", "LSTMCell",
             lambda: (r(2, 3), (r(2, 5), r(2, 5).bfloat16())), tol=TOL[torch.float32]),
    Accepted("LSTMCell-float64-c0-float32", "LSTMCell", lambda: (r64(2, 3), (r64(2, 5), r(2, 5))),
             dict(dtype=F64)),
    Accepted("LSTMCell-hx-list", "LSTMCell", lambda: (r64(2, 3), [r64(2, 5)] * 2), dict(dtype=F64)),
    Accepted("GRUCell-bias-str", "GRUCell", lambda: (r64(2, 3),), dict(bias="relu", dtype=F64)),
    Accepted("GRUCell-hidden_size-0", "GRUCell", lambda: (r64(2, 3),), dict(dtype=F64),
             ctor=(3, 0)),
    Accepted("LSTMCell-input_size-0", "LSTMCell", lambda: (r64(2, 0),), dict(dtype=F64),
             ctor=(0, 5)),
    Accepted("RNN-positional-nonlinearity", "RNN", lambda: (r64(4, 2, 3),), dict(dtype=F64),
             ctor=(3, 5, 2, "relu", False, False, 0.0, True)),
    Accepted("RNNCell-positional-nonlinearity", "RNNCell", lambda: (r64(2, 3), r64(2, 5)),
             dict(dtype=F64), ctor=(3, 5, True, "relu")),
]


def _flat(result) -> list:
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _flat(item)]
    return [result]


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # mkldnn.flags()
@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_accepted_like_torch(case):
    args = case.args()
    torch.manual_seed(0)
    ref = getattr(torch.nn, case.kind)(*case.ctor, **case.kwargs)
    fused = getattr(fusedrnn, case.kind)(*case.ctor, **case.kwargs)
    fused.load_state_dict(ref.state_dict())
    with torch.backends.mkldnn.flags(enabled=not case.native_torch):
        expected = _flat(ref(*args))
    actual = _flat(fused(*args))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
        torch.testing.assert_close(a, e, atol=case.tol, rtol=0)


def _torch_under_autocast(module, x) -> list:
    """torch.nn's results under CPU bf16 autocast. Where oneDNN has no bf16 LSTM on this
    CPU (no AVX-512: torch.nn raises "could not create a primitive descriptor"), torch.nn's
    native kernels stand in, on the module and input in bf16: the dtype oneDNN's path
    returns, and torch.nn's own error in that precision."""
    try:
        return _flat(module(x))
    except RuntimeError as exc:
        if "primitive descriptor" not in str(exc):
            raise
    with torch.autocast("cpu", enabled=False), torch.backends.mkldnn.flags(enabled=False):
        return _flat(copy.deepcopy(module).bfloat16()(x.bfloat16()))


AUTOCAST_CASES = [pytest.param(kind, dtype, id=f"{kind}-{name}-input")
                  for kind in KINDS + CELLS
                  for dtype, name in ((F32, "fp32"), (torch.bfloat16, "bf16"))]


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # mkldnn.flags()
@pytest.mark.parametrize("kind,dtype", AUTOCAST_CASES)
def test_autocast_like_torch(kind, dtype):
    """Under torch.autocast (CPU, bf16): the dtype torch.nn returns, and no more than twice
    torch.nn's error against fp64 (at a size where that error is more than the rounding of
    a handful of bf16 outputs)."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(16, 32)
    fused = getattr(fusedrnn, kind)(16, 32)
    fused.load_state_dict(ref.state_dict())
    x = (r(16, 16) if kind.endswith("Cell") else r(20, 4, 16)).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = _torch_under_autocast(ref, x), _flat(fused(x))
    exact = _flat(ref.double()(x.double()))
    for a, e, t in zip(actual, expected, exact, strict=True):
        assert a.dtype == e.dtype  # what autocast gives torch.nn
        torch_error = (e.double() - t).abs().max().item()
        assert (a.double() - t).abs().max().item() <= 2 * torch_error


# ---------------------------------------------- what fusedrnn alone rejects


# torch.nn computes something for these; fusedrnn refuses, for the reason given.
REJECTED = [
    ("batch-sizes-sum-differs-from-data", "GRU",
     lambda: (PackedSequence(r(6, 3), torch.tensor([3, 2])),), ValueError,
     r"batch_sizes sum to 5 but data has 6 rows",
     "torch.nn ignores the rows past the sum"),
    ("batch-sizes-zero-step", "LSTM", lambda: (PackedSequence(r(3, 3), torch.tensor([3, 0])),),
     ValueError, r"batch_sizes must be positive, got \[3, 0\]",
     "pack_padded_sequence never builds a step with no sequence"),
    ("sorted-indices-length", "GRU",
     lambda: (PackedSequence(r(5, 3), torch.tensor([3, 2]), torch.tensor([0, 1]),
                             torch.tensor([0, 1])),),
     ValueError, r"sorted_indices must have shape \(3,\), got \(2,\)",
     "torch.nn permutes the states with indices that do not cover the batch"),
    ("unsorted-packed-h0-larger-batch", "GRU", lambda: (pack(sort=False), z(1, 3, 5)), RuntimeError,
     r"Expected hidden size \(1, 2, 5\), got \[1, 3, 5\]",
     "torch.nn permutes h_0 before its size check and silently drops the extra row"),
    ("c0-complex", "LSTMCell", lambda: (r(2, 3), (z(2, 5), z(2, 5, dtype=torch.complex64))),
     TypeError, r"fusedrnn computes real states only", "fusedrnn has no complex kernels"),
]


@pytest.mark.parametrize("name,kind,args,exc,match,why", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected_by_fusedrnn_only(name, kind, args, exc, match, why):
    inputs = args()
    torch.manual_seed(0)
    getattr(torch.nn, kind)(3, 5)(*inputs)  # torch.nn computes something (the reason: `why`)
    with pytest.raises(exc, match=match):
        getattr(fusedrnn, kind)(3, 5)(*inputs)


def test_unbatched_cell_with_square_state_raises():
    """torch.nn.LSTMCell/GRUCell segfault on a 1-D input with an (H, H) state."""
    with pytest.raises(RuntimeError,
                       match=r"h_0 of shape \(5, 5\) for a 1-D input: expected \(5,\)"):
        fusedrnn.LSTMCell(3, 5)(r(3), (z(5, 5), z(5, 5)))
    with pytest.raises(RuntimeError, match=r"h_0 of shape \(5, 5\) for a 1-D input"):
        fusedrnn.GRUCell(3, 5)(r(3), z(5, 5))


# ------------------------------------------------------- layer ops: lengths


def _layer_call(kind, lengths):
    T, B, I, H = 4, 2, 3, 5
    x, h0 = torch.randn(T, B, I), torch.zeros(B, H)
    if kind == "lstm":
        return ops.lstm_layer(x, torch.randn(4 * H, I), None, torch.randn(4 * H, H), None, h0, h0,
                              lengths)
    if kind == "rnn":
        return ops.rnn_layer(x, torch.randn(H, I), None, torch.randn(H, H), h0, lengths)
    return ops.gru_layer(x, torch.randn(3 * H, I), None, torch.randn(3 * H, H), None, h0, lengths)


LENGTH_ERRORS = [
    ("too_long", torch.tensor([5, 2]), ValueError, r"lengths must lie in \[0, 4\].*2 to 5"),
    ("negative", torch.tensor([-1, 2]), ValueError, r"lengths must lie in \[0, 4\].*-1 to 2"),
    ("float", torch.tensor([1.0, 2.0]), TypeError, r"lengths must be an integer tensor.*float32"),
    ("bool", torch.tensor([True, False]), TypeError, r"lengths must be an integer tensor.*bool"),
    ("too_many", torch.tensor([1, 2, 3]), ValueError,
     r"lengths must have shape \(2,\), got \(3,\)"),
    ("2d", torch.tensor([[1, 2]]), ValueError, r"lengths must have shape \(2,\), got \(1, 2\)"),
    ("0d", torch.tensor(2), ValueError, r"lengths must have shape \(2,\), got \(\)"),
]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("lengths,exc,match", [e[1:] for e in LENGTH_ERRORS],
                         ids=[e[0] for e in LENGTH_ERRORS])
def test_layer_bad_lengths(kind, lengths, exc, match):
    with pytest.raises(exc, match=match):
        _layer_call(kind, lengths)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_int32_lengths_equal_int64(kind):
    torch.manual_seed(3)
    a = _layer_call(kind, torch.tensor([4, 2], dtype=torch.int32))
    torch.manual_seed(3)
    b = _layer_call(kind, torch.tensor([4, 2]))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# -------------------------------------------------------------- empty batch


def _hx(kind, h0, c0=None):
    return (h0, h0 if c0 is None else c0) if kind == "LSTM" else h0


@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_like_torch(kind, with_hx, batch_first):
    ref, fused = make_pair(kind, 3, 5, num_layers=2, bidirectional=True,
                           batch_first=batch_first, dtype=F64)
    x = torch.randn((0, 4, 3) if batch_first else (4, 0, 3), dtype=F64)
    hx = _hx(kind, torch.randn(4, 0, 5, dtype=F64), torch.randn(4, 0, 5, dtype=F64)) \
        if with_hx else None
    expected = run(ref, x, hx)
    actual = run(fused, x, hx)  # backward included
    assert actual["out0"].shape == ((0, 4, 10) if batch_first else (4, 0, 10))
    assert_results_close(actual, expected, TOL[F64], "empty batch")


@pytest.mark.parametrize("kind", CELLS)
def test_cell_empty_batch_like_torch(kind):
    ref, fused = make_pair(kind, 3, 5, dtype=F64)
    x = torch.randn(0, 3, dtype=F64)
    assert_results_close(run(fused, x), run(ref, x), TOL[F64], "empty batch")


# ------------------------------------------------- non-contiguous / strided


def _strided_inputs(form):
    """``(x, wrap)`` where ``wrap(x)`` is a non-contiguous (T, B, I) view of the leaf ``x``."""
    T, B, I = 5, 3, 4
    if form == "transposed":
        return torch.randn(B, T, I, dtype=F64), lambda x: x.transpose(0, 1)
    if form == "batch_step":
        return torch.randn(T, 2 * B, I, dtype=F64), lambda x: x[:, ::2]
    if form == "feature_step":
        return torch.randn(T, B, 2 * I, dtype=F64), lambda x: x[..., ::2]
    raise AssertionError(form)


@pytest.mark.parametrize("form", ["transposed", "batch_step", "feature_step"])
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_input_and_states(kind, form):
    ref, fused = make_pair(kind, 4, 5, num_layers=2, bidirectional=True, dtype=F64)
    x, view = _strided_inputs(form)
    # states as transposed views of (B, L*D, H) tensors
    h0 = torch.randn(3, 4, 5, dtype=F64).transpose(0, 1)
    c0 = torch.randn(3, 4, 5, dtype=F64).transpose(0, 1)
    hx = _hx(kind, h0, c0)
    assert not view(x).is_contiguous() and not h0.is_contiguous()
    strided = run(fused, x, hx, wrap=view)
    contiguous_hx = tuple(s.contiguous() for s in hx) if kind == "LSTM" else hx.contiguous()
    contiguous = run(fused, x, contiguous_hx, wrap=lambda x: view(x).contiguous())
    assert_results_close(strided, contiguous, TOL[F64], "strided vs contiguous")
    assert_results_close(strided, run(ref, x, hx, wrap=view), TOL[F64], "strided vs torch.nn")


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_batch_first_and_packed(kind):
    ref, fused = make_pair(kind, 4, 5, batch_first=True, dtype=F64)
    x = torch.randn(5, 3, 4, dtype=F64)  # time-major storage, used through a batch-first view
    assert_results_close(run(fused, x, wrap=lambda x: x.transpose(0, 1)),
                         run(ref, x, wrap=lambda x: x.transpose(0, 1)), TOL[F64], "batch_first")
    lengths = torch.tensor([2, 5, 3])

    def pack_strided(x):
        return pack_padded_sequence(x[:, ::2], lengths, batch_first=True, enforce_sorted=False)
    x = torch.randn(3, 10, 4, dtype=F64)
    assert_results_close(run(fused, x, wrap=pack_strided), run(ref, x, wrap=pack_strided),
                         TOL[F64], "packed")


@pytest.mark.parametrize("kind", CELLS)
def test_cell_non_contiguous(kind):
    ref, fused = make_pair(kind, 4, 5, dtype=F64)
    x = torch.randn(4, 6, dtype=F64)
    h0 = torch.randn(5, 3, dtype=F64).t()
    hx = (h0, torch.randn(5, 3, dtype=F64).t()) if kind == "LSTMCell" else h0

    def view(x):
        return x.t()[::2]
    assert not view(x).is_contiguous()
    assert_results_close(run(fused, x, hx, wrap=view), run(ref, x, hx, wrap=view), TOL[F64], kind)
