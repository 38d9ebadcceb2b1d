"""The implementations compared with torch.nn (the baseline, always present).

A :class:`Peer` is an implementation family; ``peer.build(cfg, baseline)``
gives a :class:`BuiltPeer` for one configuration: a forward with torch.nn's
contract, loaded with the baseline's weights, and the parameters whose
gradients the gate compares.  The peers are pluggable, so tests can inject a
deliberately wrong kernel.

fusedrnn itself is imported when its peer is built, not here, so a broken
build gives an ``error`` row instead of stopping the run.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
from typing import Callable, Optional

import torch

from fusedrnn import reference

from .configs import CELL_MODULES, Config, module_class

BASELINE = "torch.nn"  # the name of the baseline's rows: every peer is compared with it


class BuiltPeer:
    """A peer built for one configuration: ``forward(x, hx)`` with torch.nn's
    contract (time-major input, returns ``(output, h_n)`` or
    ``(output, (h_n, c_n))``) and its leaf parameters, by torch.nn's names."""

    def __init__(self, forward: Callable, params: dict, note: str = "",
                 prepare: Optional[Callable] = None):
        self.forward = forward
        self.params = dict(params)
        self.note = note
        self._prepare = prepare

    def prepare(self, x, hx) -> Callable[[], torch.Tensor]:
        """The call to time, without arguments; it returns the output tensor.
        A peer may do untimed set-up here (FlashRNN's input projection)."""
        if self._prepare is not None:
            return self._prepare(x, hx)
        return lambda: self.forward(x, hx)[0]


class Peer:
    """An implementation to compare with torch.nn.  Subclass and override
    :meth:`build` (and :meth:`skip_reason` where it does not apply)."""

    name = "peer"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        return None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        raise NotImplementedError


def built_module(module: torch.nn.Module, note: str = "") -> BuiltPeer:
    """A module with torch.nn.LSTM/GRU's call, as a built peer."""
    return BuiltPeer(lambda x, hx: module(x, hx), dict(module.named_parameters()), note=note)


class ModulePeer(Peer):
    """Drop-in module classes with torch.nn.LSTM/GRU/RNN's constructors and
    state_dicts: built, then loaded with the baseline's ``state_dict``.

    ``resolve`` (called at build time) returns ``(classes, note)``, ``classes`` a
    dict by torch.nn's class name (``"LSTM"``, ``"GRU"``, ``"RNN"``); or give
    the classes directly."""

    def __init__(self, name: str, lstm=None, gru=None, rnn=None,
                 resolve: Optional[Callable] = None, note: str = ""):
        self.name = name
        self._classes = {"LSTM": lstm, "GRU": gru, "RNN": rnn}
        self._resolve, self._note = resolve, note

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        classes, note = self._resolve() if self._resolve is not None else (self._classes,
                                                                            self._note)
        cls, kwargs = module_class(classes, cfg.cell)
        if cls is None:
            raise RuntimeError(f"{self.name}: no {CELL_MODULES[cfg.cell][0]} class")
        m = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional, **kwargs)
        m = m.to(device=cfg.device, dtype=cfg.torch_dtype)
        m.load_state_dict(baseline.state_dict())
        return built_module(m.train(), note)


def _resolve_fusedrnn(module: str = "fusedrnn"):
    fr = importlib.import_module(module)
    classes = {name: getattr(fr, name, None) for name in ("LSTM", "GRU", "RNN")}
    try:
        note = f"backend {fr.backend()}"
    except Exception as e:  # noqa: BLE001  (the row still runs; the note says why it is unknown)
        note = f"backend unknown ({type(e).__name__})"
    try:
        note += f" ({fr.build_info()})"
    except Exception:  # noqa: BLE001  (build_info is optional: stand-ins in tests lack it)
        pass
    return classes, note


class FusedRNNPeer(ModulePeer):
    """The real ``fusedrnn.LSTM`` / ``fusedrnn.GRU``, imported at build time
    (``module`` exists so that tests can point it at a stand-in)."""

    def __init__(self, module: str = "fusedrnn"):
        super().__init__("fusedrnn", resolve=lambda: _resolve_fusedrnn(module))


class ReferencePeer(Peer):
    """``fusedrnn.reference``: the pure-Python oracle (slow, per-step torch ops),
    run through :func:`fusedrnn.reference.module_forward` on a copy of the baseline."""

    name = "reference"

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        module = copy.deepcopy(baseline)

        def forward(x, hx):
            return reference.module_forward(module, x, hx)

        return BuiltPeer(forward, dict(module.named_parameters()), note="pure-Python oracle")


def flashrnn_function():
    """FlashRNN's ``flashrnn`` function, or None when it is not installed."""
    if importlib.util.find_spec("flashrnn") is None:
        return None
    for modname in ("flashrnn.flashrnn", "flashrnn"):
        try:
            fn = getattr(importlib.import_module(modname), "flashrnn", None)
        except Exception:  # noqa: BLE001  (a broken install counts as not installed)
            continue
        if callable(fn):
            return fn
    return None


class FlashRNNPeer(Peer):
    """FlashRNN (``pip install flashrnn``), LSTM only, GPU only.  It takes the
    input projection ``W_ih x + b`` precomputed: the timed call excludes it
    (the gate computes it under autograd so gradients are comparable)."""

    name = "flashrnn"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        if flashrnn_function() is None:
            return "flashrnn: not installed"
        if cfg.device != "cuda":
            return "flashrnn: GPU only"
        if cfg.cell != "lstm":
            return "flashrnn: LSTM only here (its GRU is a different formulation)"
        if cfg.layers != 1 or cfg.bidirectional:
            return "flashrnn: one layer, one direction only"
        if cfg.dtype == "float64":
            return "flashrnn: no fp64"
        return None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:  # pragma: no cover (GPU + flashrnn)
        fn = flashrnn_function()
        T, B, H = cfg.T, cfg.B, cfg.H
        params = {n: p.detach().clone().requires_grad_(True) for n, p in baseline.named_parameters()}
        w_ih, w_hh = params["weight_ih_l0"], params["weight_hh_l0"]
        b_ih, b_hh = params["bias_ih_l0"], params["bias_hh_l0"]
        zero_b = torch.zeros(4, 1, H, device=cfg.device, dtype=cfg.torch_dtype)

        def project(x):
            return torch.nn.functional.linear(x, w_ih, b_ih + b_hh)  # (T, B, 4H), gates i,f,g,o

        def core(wx, h0, c0):
            Wx = wx.transpose(0, 1).reshape(B, T, 4, 1, H)  # BTGHD
            R = w_hh.view(4, 1, H, H)  # GHDP: gate, head, out, in
            states = torch.stack([h0[0], c0[0]]).view(2, B, 1, 1, H)
            h, last = fn(Wx=Wx, R=R, b=zero_b, states=states, function="lstm",
                         backend="cuda_fused", dtype=cfg.dtype)
            out = h[0].reshape(B, T, H).transpose(0, 1)
            return out, (last[0].reshape(1, B, H), last[1].reshape(1, B, H))

        def forward(x, hx):
            return core(project(x), *hx)

        def prepare(x, hx):
            with torch.no_grad():
                wx = project(x)
            wx.requires_grad_(x.requires_grad)

            def call():
                wx.grad = None
                return core(wx, *hx)[0]
            return call

        return BuiltPeer(forward, params, prepare=prepare,
                         note="input projection precomputed (not timed); backend cuda_fused")


def default_peers(device: str, reference: bool = False, flashrnn: bool = True) -> list:
    """The peers of a normal run (torch.nn, the baseline, is always there)."""
    peers: list = [FusedRNNPeer()]
    if reference:
        peers.append(ReferencePeer())
    if flashrnn and device == "cuda":
        peers.append(FlashRNNPeer())
    elif flashrnn and flashrnn_function() is None:
        peers.append(FlashRNNPeer())  # a "skipped: flashrnn: not installed" row
    return peers
