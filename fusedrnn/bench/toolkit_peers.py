"""Peers for the sequence-modelling toolkit: ``step`` and the module features.

* :class:`StepPeer` times ``fusedrnn.LSTM/GRU.step`` on the single-step rows
  (T=1) against torch.nn's call on a 1-step sequence: what a streaming
  caller pays per step. It passes the same gate as every peer.
* :class:`FeaturePeer` is fusedrnn with one feature on (``zoneout``,
  ``grad_clip``, ...), timed in the same run as fusedrnn without it, so the
  ratio of the two rows is the feature's cost (:func:`feature_costs`); in
  training mode on the train rows, in eval mode on the inference rows. A
  feature that changes the results cannot match torch.nn: its gate is torch.nn's
  where the feature is the identity (regularisers in inference, ``grad_clip``
  without a backward, ``forget_bias`` after loading torch.nn's weights), else
  the shapes and finiteness of every result. Its correctness is tested against
  ``fusedrnn.reference`` in the test suite, not here.
"""

from __future__ import annotations

import importlib
import math
from typing import Optional

import torch

from .configs import Config, module_class
from .gate import GateResult, evaluate, gate_check
from .peers import BuiltPeer, Peer


def _module(cfg: Config, baseline: torch.nn.Module, train: bool = True,
            **features) -> torch.nn.Module:
    cls, kwargs = module_class(importlib.import_module("fusedrnn"), cfg.cell)
    m = cls(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.bidirectional, **kwargs,
            **features)
    m = m.to(device=cfg.device, dtype=cfg.torch_dtype)
    # torch.nn's weights; layer_norm's own parameters, the only ones a feature adds,
    # keep their initial gain 1 and bias 0
    missing, unexpected = m.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("layer_norm") for name in missing)
    return m.train(train)


class StepPeer(Peer):
    """``rnn.step(x_t, state)`` on the single-step rows (T=1)."""

    name = "fusedrnn.step"

    def skip_reason(self, cfg: Config) -> Optional[str]:
        if cfg.T != 1:
            return "step: single-step rows only (T=1)"
        if cfg.bidirectional:
            return "step: a bidirectional module cannot be stepped"
        return None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        m = _module(cfg, baseline)

        def forward(x, hx):
            h_t, state = m.step(x[0], hx)
            return h_t.unsqueeze(0), state

        def prepare(x, hx):
            x_t = x[0]  # a streaming caller holds x_t itself: not timed
            return lambda: m.step(x_t, hx)[0].unsqueeze(0)  # torch.nn's (1, B, H)

        return BuiltPeer(forward, dict(m.named_parameters()), prepare=prepare,
                         note="one step(x_t, state) call vs torch.nn on a 1-step sequence")


# Each feature at a typical setting, for LSTM and GRU (None: the cell has no such feature).
FEATURES = {
    "forget_bias": ({"forget_bias": 1.0}, None),
    "weight_drop": ({"weight_drop": 0.5}, {"weight_drop": 0.5}),
    "cell_clip": ({"cell_clip": 3.0}, None),
    "zoneout": ({"zoneout": (0.1, 0.05)}, {"zoneout": 0.1}),
    "recurrent_dropout": ({"recurrent_dropout": 0.25}, {"recurrent_dropout": 0.25}),
    "grad_clip": ({"grad_clip": 1.0}, {"grad_clip": 1.0}),
    "layer_norm": ({"layer_norm": True}, {"layer_norm": True}),
}
# Features that leave a call's results as torch.nn's: in inference (the regularisers),
# always in the forward (grad_clip), or always once torch.nn's weights are loaded.
_IDENTITY_IN_INFER = {"weight_drop", "recurrent_dropout", "grad_clip", "forget_bias"}
_IDENTITY_ALWAYS = {"forget_bias"}


class FeaturePeer(Peer):
    """fusedrnn with one feature of :data:`FEATURES` on."""

    def __init__(self, feature: str):
        self.feature = feature
        self.name = f"+{feature}"

    def _kwargs(self, cell: str) -> Optional[dict]:
        lstm, gru = FEATURES[self.feature]
        return lstm if cell == "lstm" else gru

    def skip_reason(self, cfg: Config) -> Optional[str]:
        kwargs = self._kwargs(cfg.cell)
        return f"{self.feature}: LSTM only" if kwargs is None else None

    def build(self, cfg: Config, baseline: torch.nn.Module) -> BuiltPeer:
        # inference rows in eval mode: what a deployed model with the feature runs
        m = _module(cfg, baseline, cfg.mode == "train", **self._kwargs(cfg.cell))
        return BuiltPeer(lambda x, hx: m(x, hx), dict(m.named_parameters()),
                         note=f"{self.feature} on" + ("" if cfg.mode == "train" else ", eval mode"))

    def identity(self, train: bool) -> bool:
        return (self.feature in _IDENTITY_ALWAYS
                or (not train and self.feature in _IDENTITY_IN_INFER))

    def check(self, case, train: bool):
        """The gate (see the module docstring): ``(BuiltPeer, GateResult)``."""
        built = self.build(case.cfg, case.baseline)
        res = evaluate(built, case.cfg.cell, case.inputs(), train)
        base = case.baseline_results(train)
        if self.identity(train):
            return built, gate_check(case.cfg.dtype, base, res, case.reference_results(train))
        return built, _shape_gate(base, res)


def _shape_gate(base: dict, peer: dict) -> GateResult:
    """Pass when every result has torch.nn's shape and only finite values."""
    failures = []
    for key, b in base.items():
        p = peer.get(key)
        if p is None or p.shape != b.shape:
            failures.append(f"{key}: shape {None if p is None else tuple(p.shape)} "
                            f"!= {tuple(b.shape)}")
        elif not torch.isfinite(p).all():
            failures.append(f"{key}: not finite")
    diff = (peer["output"].double() - base["output"].double()).abs().max().item()
    return GateResult(not failures, "feature changes results: shapes and finiteness only",
                      list(base), failures, None, 0.0 if not failures else math.inf, diff)


def toolkit_peers(configs, features: bool) -> list:
    """The step peer where a run has single-step rows; the feature peers when asked."""
    peers: list = []
    if any(c.T == 1 and not c.bidirectional for c in configs):
        peers.append(StepPeer())
    if features:
        peers += [FeaturePeer(f) for f in FEATURES]
    return peers


def feature_costs(rows: list) -> list:
    """Lines ``config: +feature 1.23x`` (the feature's row time over fusedrnn's)."""
    fused = {r["id"]: r for r in rows if r["peer"] == "fusedrnn" and r["time_ms"]}
    lines = []
    for r in rows:
        base = fused.get(r["id"])
        if r["peer"].startswith("+") and r["time_ms"] and base:
            cost = r["time_ms"]["median"] / base["time_ms"]["median"]
            lines.append(f"{r['label']}: {r['peer']} costs {cost:.2f}x fusedrnn")
    return lines
