"""The harness's toolkit rows: ``step`` on the single-step rows, and each feature's cost.
Tiny shapes, two reps; nothing here asserts on a speed."""

import pytest
import torch

from fusedrnn import bench
from fusedrnn.bench import toolkit_peers as tk

FAST = dict(reps=2, warmup=1, min_sample_s=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(cell="lstm", mode="train", T=1, B=2, I=3, H=4, **kw):
    return bench.Config(cell, mode, "float32", "cpu", T, B, I, H, **kw)


@pytest.mark.parametrize("cell,mode,layers", [("lstm", "train", 1), ("gru", "infer", 1),
                                              ("lstm", "infer", 2), ("gru", "train", 2)])
def test_step_rows_pass_the_gate_and_are_timed(cell, mode, layers):
    base, row = bench.gate_and_time(cfg(cell, mode, layers=layers), [tk.StepPeer()], **FAST)
    assert row["peer"] == "fusedrnn.step"
    assert row["status"] == "ok", row["note"]
    assert row["ratio_vs_torch"] > 0 and row["gate"]["passed"]


def test_step_rows_only_where_they_apply():
    peer = tk.StepPeer()
    assert peer.skip_reason(cfg(T=5)) == "step: single-step rows only (T=1)"
    assert "bidirectional" in peer.skip_reason(cfg(bidirectional=True))
    assert [p.name for p in tk.toolkit_peers([cfg(T=5)], features=False)] == []
    assert [p.name for p in tk.toolkit_peers([cfg(T=5), cfg(T=1)], features=False)] == \
        ["fusedrnn.step"]
    names = [p.name for p in tk.toolkit_peers([cfg(T=5)], features=True)]
    assert names == ["+" + f for f in tk.FEATURES]


def test_the_streaming_preset_gets_the_step_row():
    configs = bench.preset_configs("streaming", "cpu")
    assert any(isinstance(p, tk.StepPeer) for p in tk.toolkit_peers(configs, features=False))
    assert bench.PRESETS["features"].shapes("cpu") == (bench.Shape(50, 16, 128, 128),)


@pytest.mark.parametrize("feature", list(tk.FEATURES))
@pytest.mark.parametrize("cell,mode", [("lstm", "train"), ("gru", "infer")])
def test_feature_rows(feature, cell, mode):
    """A feature the module takes is gated and timed; one it lacks is a skipped row
    that says why (LSTM-only features on a GRU, features not yet available)."""
    peer = tk.FeaturePeer(feature)
    row = bench.gate_and_time(cfg(cell, mode, T=4), [bench.FusedRNNPeer(), peer], **FAST)[2]
    reason = peer.skip_reason(cfg(cell, mode))
    if reason is None:
        assert row["status"] == "ok", row["note"]
        assert row["note"].startswith(f"{feature} on")
        assert row["gate"]["rule"] != "baseline"
    else:
        assert row["status"] == "skipped" and row["note"] == reason
        assert reason == f"{feature}: LSTM only" or reason.startswith(f"{feature}: not available")


def test_shape_gate_refuses_non_finite_and_misshapen_results():
    base = {"output": torch.zeros(2, 3), "h_n": torch.zeros(1, 3)}
    assert tk._shape_gate(base, {"output": torch.ones(2, 3), "h_n": torch.ones(1, 3)}).passed
    nan = torch.full((2, 3), float("nan"))
    bad = tk._shape_gate(base, {"output": nan, "h_n": torch.ones(1, 3)})
    assert not bad.passed and "output: not finite" in bad.failures
    bad = tk._shape_gate(base, {"output": torch.ones(2, 3), "h_n": torch.ones(2, 3)})
    assert not bad.passed and "h_n: shape" in bad.failures[0]


def test_feature_costs_are_time_over_fusedrnn_time():
    def row(peer, median):
        return {"id": "a", "label": "lstm train", "peer": peer, "time_ms": {"median": median}}
    lines = tk.feature_costs([row("torch.nn", 3.0), row("fusedrnn", 2.0), row("+zoneout", 3.0)])
    assert lines == ["lstm train: +zoneout costs 1.50x fusedrnn"]
