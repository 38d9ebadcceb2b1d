"""Tests of the benchmark harness (the fusedrnn.bench package): argument
handling, the correctness gate (a wrong kernel is marked failed and never
timed), the timing rows, and the files it writes, with or without matplotlib.
Tiny shapes, one or two reps; nothing here asserts on a speed."""

import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from fusedrnn import bench, reference
from fusedrnn.bench.load import busy_processes
from fusedrnn.bench.onnx_peers import ONNX_PEERS

ROOT = Path(__file__).resolve().parents[1]


FAST = dict(reps=2, warmup=1, min_sample_s=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes: one thread keeps these tests fast even when the machine is busy
    (two OpenMP threads on a loaded 2-core box can take 50x longer per call)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def cfg(cell="lstm", mode="train", T=5, B=2, I=3, H=4, dtype="float32", **kw):
    return bench.Config(cell, mode, dtype, "cpu", T, B, I, H, **kw)


# --- stand-in peers --------------------------------------------------------

class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.scale, None


def counting(base_cls, out_shift=0.0, grad_scale=1.0):
    """A torch.nn.LSTM/GRU subclass that counts its calls and can be wrong
    in its output (``out_shift``) or only in its gradients (``grad_scale``)."""

    class Peer(base_cls):
        calls = 0

        def forward(self, x, hx=None):
            type(self).calls += 1
            out, state = super().forward(x, hx)
            if grad_scale != 1.0:
                out = _ScaleGrad.apply(out, grad_scale)
            return out + out_shift, state

    return Peer


def module_peer(name, **kw):
    lstm, gru = counting(torch.nn.LSTM, **kw), counting(torch.nn.GRU, **kw)
    peer = bench.ModulePeer(name, lstm=lstm, gru=gru, note="stand-in")
    return peer, lstm, gru


# --- argument handling -----------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--preset", "nope"], "--preset"),
    (["--device", "tpu"], "--device"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--dtype", "float32,int8"], "unknown dtype"),
    (["--cell", "rnn"], "--cell"),
    (["--mode", "eval"], "--mode"),
    (["--reps", "0"], "--reps"),
    (["--reps", "three"], "--reps"),
    (["--warmup", "-1"], "--warmup"),
    (["--threads", "0"], "--threads"),
    (["--min-sample-ms", "-2"], "--min-sample-ms"),
    (["--shape", "10,2,3"], "T,B,I,H"),
    (["--shape", "10,2,3,0"], ">= 1"),
    (["--layers", "0"], "--layers"),
    (["--peers", "onnxruntime,tensorrt"], "unknown peers"),
    (["--load", "-1"], "--load"),
    (["--bogus"], "unrecognized"),
])
def test_bad_arguments_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--device", "cpu"] + argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_cuda_requested_without_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cuda", "--preset", "quick"])
    assert e.value.code == 2
    assert "cuda" in capsys.readouterr().err
    assert bench.parse_args([]).device == "cpu"  # default falls back to the CPU


def test_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--device", "cpu", "--out", str(f)])
    assert e.value.code == 2 and "not a directory" in capsys.readouterr().err


def test_parse_defaults_and_overrides():
    a = bench.parse_args(["--device", "cpu"])
    assert a.preset == "default" and a.dtypes == ("float32",)
    assert a.cells == ("lstm", "gru") and a.modes == ("train", "infer")
    assert (a.reps, a.warmup) == (bench.PRESETS["default"].reps["cpu"],
                                  bench.PRESETS["default"].warmup["cpu"])
    a = bench.parse_args(["--device", "cpu", "--preset", "quick", "--dtype", "bf16,fp32,bf16",
                          "--cell", "gru", "--mode", "infer", "--reps", "3", "--warmup", "0"])
    assert a.dtypes == ("bfloat16", "float32")
    assert (a.cells, a.modes, a.reps, a.warmup) == (("gru",), ("infer",), 3, 0)
    assert bench.parse_dtypes("half, F64") == ("float16", "float64")  # benchmarks/ uses it
    with pytest.raises(ValueError, match="unknown dtype"):
        bench.parse_dtypes("fp8")


def test_configs_from_args_default_cpu_is_design_shapes():
    cfgs = bench.configs_from_args(bench.parse_args(["--device", "cpu"]))
    got = {(c.cell, c.mode, c.T, c.B, c.I, c.H) for c in cfgs}
    want = {(cell, mode, T, B, I, H)
            for (T, B, I, H) in [(100, 64, 256, 256), (100, 16, 512, 512), (200, 1, 128, 128)]
            for cell in ("lstm", "gru") for mode in ("train", "infer")}
    assert got == want and len(cfgs) == 12
    assert all(c.dtype == "float32" and c.device == "cpu" for c in cfgs)
    cfgs = bench.configs_from_args(bench.parse_args(
        ["--device", "cpu", "--shape", "7,3,5,6", "--shape", "7,3,5,6", "--layers", "2",
         "--bidirectional", "--cell", "lstm", "--mode", "train"]))
    assert [c.id for c in cfgs] == ["lstm-train-fp32-T7-B3-I5-H6-L2-bi"]


def test_list_prints_configurations(capsys):
    assert bench.main(["--device", "cpu", "--preset", "quick", "--list"]) == 0
    out = capsys.readouterr().out
    assert "lstm-train-fp32-T32-B8-I64-H64" in out and "8 configurations" in out


def test_presets_hold_the_design_grids():
    P = bench.PRESETS
    assert set(P) == {"quick", "default", "cpu", "streaming", "fastrnns", "flashrnn", "cudnn",
                      "cuda", "persistent", "features"}
    assert bench.Shape(100, 64, 512, 512) in P["default"].shapes("cuda")
    assert any(s.B == 1 for s in P["default"].shapes("cuda"))  # small-batch latency row
    assert P["fastrnns"].shapes("cuda") == (bench.Shape(100, 64, 512, 512),
                                            bench.Shape(100, 64, 512, 512, layers=4))
    grid = P["cuda"].shapes("cuda")
    assert {(s.T, s.B, s.H) for s in grid} == {(512, b, h) for b in (1, 16, 64, 256)
                                               for h in (256, 512, 1024)}
    assert set(P["cuda"].dtypes("cuda")) == {"float32", "bfloat16"}
    pers = P["persistent"].shapes("cuda")
    assert {(s.T, s.B, s.H) for s in pers} == {(1024, b, h) for b in (1, 4, 16, 64)
                                               for h in (256, 512, 768, 1024)}
    fl = P["flashrnn"].shapes("cuda")
    assert bench.Shape(1024, 16, 768, 768) in fl
    assert {s.B for s in fl if s.T == 1024} >= {2, 256} and {s.T for s in fl if s.B == 16} >= {256, 2048}
    cu = P["cudnn"].shapes("cuda")
    assert {s.H for s in cu} >= {64, 2048} and {s.B for s in cu} >= {1, 128}
    for name in ("default", "fastrnns", "flashrnn", "cudnn"):
        assert set(P[name].dtypes("cuda")) == {"float32", "bfloat16", "float16"}
    default_cpu = [(100, 64, 256, 256), (100, 16, 512, 512), (200, 1, 128, 128)]
    assert P["default"].shapes("cpu") == tuple(bench.Shape(*s) for s in default_cpu)
    cpu = default_cpu + [(100, 4, 64, 128), (32, 8, 64, 64), (35, 20, 200, 200)]
    assert P["cpu"].shapes("cpu") == P["cpu"].shapes("cuda") == tuple(bench.Shape(*s) for s in cpu)
    streaming = P["streaming"].shapes("cpu")
    assert set(streaming) == {bench.Shape(*s) for s in [(200, 1, 128, 128), (100, 4, 64, 128),
                                                       (32, 8, 64, 64), (1, 1, 128, 128)]}
    assert all(s.B <= 8 for s in streaming) and len(streaming) == 4
    ids = {c.id for c in bench.preset_configs("streaming", "cpu")}
    assert {"lstm-infer-fp32-T1-B1-I128-H128", "gru-train-fp32-T1-B1-I128-H128"} <= ids


def test_flops():
    assert bench.rnn_flops("lstm", 100, 64, 256, 512) == 8 * 64 * 512 * (256 + 512) * 100
    assert bench.rnn_flops("gru", 100, 64, 256, 512) == 6 * 64 * 512 * (256 + 512) * 100
    assert bench.rnn_flops("lstm", 10, 2, 3, 4, mode="train") == 3 * 8 * 2 * 4 * 7 * 10
    # layer 2 of a bidirectional stack sees 2H inputs; two directions each
    assert bench.rnn_flops("lstm", 10, 2, 3, 4, layers=2, bidirectional=True) == \
        2 * 8 * 2 * 4 * (3 + 4) * 10 + 2 * 8 * 2 * 4 * (8 + 4) * 10
    assert cfg(mode="infer").flops == bench.rnn_flops("lstm", 5, 2, 3, 4)


# --- the correctness gate --------------------------------------------------

def test_tolerance_rules():
    """The gate applies the project's tolerances, defined once in fusedrnn.reference."""
    assert reference.TOLERANCE == {torch.float64: 1e-10, torch.float32: 5e-5}
    assert reference.low_precision_tolerance(3e-3) == 6e-3      # twice torch's own error
    assert bench.tolerance("float64", None) == 1e-10
    assert bench.tolerance("float32", 1e-7) == 5e-5          # torch accurate: the absolute bound
    assert bench.tolerance("float32", 1e-4) == 2e-4          # otherwise twice torch's own error
    assert bench.tolerance("bfloat16", 3e-2) == 6e-2


def _res(**kv):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in kv.items()}


def test_gate_check_compares_against_reference_with_twice_torch_error():
    ref = _res(output=[0.0, 0.0], **{"grad:w": [0.0]})
    base = _res(output=[1e-4, 0.0], **{"grad:w": [0.0]})       # torch's own error 1e-4
    ok = bench.gate_check("float32", base, _res(output=[1.9e-4, 0.0], **{"grad:w": [4e-5]}), ref)
    assert ok.passed and ok.checked == ["output", "grad:w"]
    bad = bench.gate_check("float32", base, _res(output=[0.0, 0.0], **{"grad:w": [6e-5]}), ref)
    assert not bad.passed and bad.worst_key == "grad:w" and "grad:w" in bad.failures[0]
    half = bench.gate_check("float16", _res(output=[0.01]), _res(output=[0.03]), _res(output=[0.0]))
    assert not half.passed                                      # 0.03 > 2 * 0.01
    assert bench.gate_check("float64", _res(output=[1.0]), _res(output=[1.0 + 1e-12])).passed
    assert not bench.gate_check("float64", _res(output=[1.0]), _res(output=[1.0 + 1e-8])).passed
    nan = bench.gate_check("float64", _res(output=[1.0]), _res(output=[math.nan]))
    assert not nan.passed
    assert not bench.gate_check("float64", _res(output=[1.0], h_n=[0.0]), _res(output=[1.0])).passed
    assert not bench.gate_check("float64", _res(output=[1.0]), _res(output=[1.0, 1.0])).passed


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_refuses_wrong_output_and_does_not_time_it(cell):
    peer, lstm, gru = module_peer("wrong", out_shift=1e-3)
    rows = bench.gate_and_time(cfg(cell=cell, mode="infer"), [peer], **FAST)
    base, bad = rows
    assert base["peer"] == "torch.nn" and base["status"] == "ok" and base["time_ms"]["median"] > 0
    assert bad["status"] == "failed" and "output" in bad["note"]
    assert bad["time_ms"] is None and bad["ratio_vs_torch"] is None and bad["tflops"] is None
    assert bad["max_abs_diff_vs_torch"] == pytest.approx(1e-3, rel=1e-3)
    assert bad["gate"]["passed"] is False
    err = bad["gate"]["errors"]["output"]
    assert err["err"] > err["tol"] == 5e-5
    assert (lstm if cell == "lstm" else gru).calls == 1  # the gate's one call: never timed


def test_gate_checks_gradients_in_train_mode_only():
    peer, lstm, _ = module_peer("badgrad", grad_scale=1.001)
    train = bench.gate_and_time(cfg(mode="train"), [peer], **FAST)[1]
    assert train["status"] == "failed" and "grad:" in train["note"]
    assert train["max_abs_diff_vs_torch"] == 0.0  # the forward is right, the gradients are not
    assert lstm.calls == 1
    infer = bench.gate_and_time(cfg(mode="infer"), [peer], **FAST)[1]
    assert infer["status"] == "ok" and infer["time_ms"] is not None
    assert lstm.calls > 1 + FAST["reps"]  # timed this time


def test_gate_passes_an_exact_dropin_and_times_it():
    peer, lstm, _ = module_peer("copy")
    base, row = bench.gate_and_time(cfg(mode="train", T=70), [peer], **FAST)  # fp64 reference
    assert row["status"] == "ok", row["note"]
    assert row["gate"]["passed"] and "grad:weight_hh_l0" in row["gate"]["checked"]
    assert "grad:input" in row["gate"]["checked"] and "grad:c0" in row["gate"]["checked"]
    assert all(e["err"] <= e["tol"] for e in row["gate"]["errors"].values())
    assert base["gate"]["torch_error_vs_ref"] < 1e-4 and base["gate"]["ref_dtype"] == "float64"
    assert row["max_abs_diff_vs_torch"] == 0.0
    t = row["time_ms"]
    assert 0 < t["min"] <= t["median"] <= t["max"]
    assert row["samples"] == FAST["reps"] and base["ratio_vs_torch"] == 1.0
    assert row["ratio_vs_torch"] == pytest.approx(base["time_ms"]["median"] / t["median"])
    assert row["us_per_step"] == pytest.approx(t["median"] * 1e3 / 70)
    assert row["tflops"] == pytest.approx(row["flops"] / (t["median"] / 1e3) / 1e12)
    assert row["peak_mem_mb"] is not None and row["peak_mem_mb"] >= 0


def test_peer_that_raises_gives_error_row_and_run_continues():
    class Broken(bench.Peer):
        name = "broken"

        def build(self, cfg, baseline):
            raise RuntimeError("kernel exploded")

    peer, _, _ = module_peer("copy")
    rows = bench.gate_and_time(cfg(mode="infer"), [Broken(), peer], **FAST)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "kernel exploded" in rows[1]["note"]


def test_fusedrnn_peer_imports_its_module_lazily(monkeypatch):
    fake = types.ModuleType("_fake_fusedrnn")
    fake.LSTM, fake.GRU, fake.backend = torch.nn.LSTM, torch.nn.GRU, lambda: "stand-in"
    monkeypatch.setitem(sys.modules, "_fake_fusedrnn", fake)
    fake_peer = bench.FusedRNNPeer("_fake_fusedrnn")
    row = bench.gate_and_time(cfg(cell="gru", mode="infer"), [fake_peer], **FAST)[1]
    assert (row["peer"], row["status"], row["note"]) == ("fusedrnn", "ok", "backend stand-in")
    missing_peer = bench.FusedRNNPeer("_no_such_fusedrnn")
    row = bench.gate_and_time(cfg(mode="infer"), [missing_peer], **FAST)[1]
    assert row["status"] == "error" and "ModuleNotFoundError" in row["note"]


def test_default_peers():
    peers = bench.default_peers("cpu")
    assert peers[0].name == "fusedrnn" and isinstance(peers[0], bench.FusedRNNPeer)
    assert "reference" in [p.name for p in bench.default_peers("cpu", reference=True)]
    if bench.flashrnn_function() is None:
        fl = [p for p in peers if p.name == "flashrnn"]
        assert fl and fl[0].skip_reason(cfg()) == "flashrnn: not installed"
    assert all(p.name != "flashrnn" for p in bench.default_peers("cpu", flashrnn=False))


def test_reference_peer_matches_torch():
    base, row = bench.gate_and_time(cfg(cell="gru", mode="train", layers=2, bidirectional=True),
                                    [bench.ReferencePeer()], **FAST)
    assert row["status"] == "ok", row["note"]
    assert row["max_abs_diff_vs_torch"] < 1e-5


def test_real_fusedrnn_rows_pass_the_gate():
    """The harness with the real fusedrnn.LSTM/GRU/RNN (what `python -m fusedrnn.bench`
    runs; ``--cell rnn_tanh`` / ``rnn_relu`` / ``all`` give the RNN's rows)."""
    for c in (cfg(cell="lstm", mode="train"), cfg(cell="gru", mode="infer"),
              cfg(cell="rnn_tanh", mode="train"), cfg(cell="rnn_relu", mode="infer")):
        row = bench.gate_and_time(c, [bench.FusedRNNPeer()], **FAST)[1]
        assert row["status"] == "ok", row["note"]
        assert row["ratio_vs_torch"] > 0


@pytest.mark.parametrize("peer", sorted(ONNX_PEERS))
def test_onnx_runtime_peers_pass_the_gate_in_inference_and_skip_training(peer):
    """ONNX Runtime and OpenVINO run the fusedrnn module's ONNX export (states in and
    out as separate tensors, the LSTM's h0 and c0 distinct), gated before timing."""
    runtime = ONNX_PEERS[peer]()
    assert runtime.skip_reason(cfg(mode="train")) is not None
    if importlib.util.find_spec(runtime.package) is None:  # an optional extra
        assert "not installed" in runtime.skip_reason(cfg(mode="infer"))
        return
    both_ways = runtime.skip_reason(cfg(mode="infer", bidirectional=True)) is None
    for c in (cfg(cell="lstm", mode="infer", layers=2, bidirectional=both_ways),
              cfg(cell="gru", mode="infer"), cfg(cell="rnn_relu", mode="infer")):
        row = bench.gate_and_time(c, [runtime], **FAST)[1]
        assert row["status"] == "ok", row["note"]
        assert row["max_abs_diff_vs_torch"] < 1e-5


def test_load_runs_busy_processes_for_the_run_and_stops_them(capsys):
    with busy_processes(2) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    assert bench.main(["--device", "cpu", "--shape", "4,2,3,4", "--cell", "gru", "--mode",
                       "infer", "--load", "1", "--no-progress"], peers=[]) == 0
    assert "1 busy processes (--load)" in capsys.readouterr().out


# --- command line, files ---------------------------------------------------

def test_main_writes_json_markdown_and_png(tmp_path, capsys):
    good, _, _ = module_peer("copy")
    wrong, _, _ = module_peer("wrong", out_shift=1e-2)
    out = tmp_path / "res"
    rc = bench.main(["--device", "cpu", "--shape", "6,2,3,4", "--shape", "6,4,3,4",
                     "--cell", "lstm", "--mode", "infer", "--reps", "1", "--warmup", "0",
                     "--min-sample-ms", "0", "--out", str(out)], peers=[good, wrong])
    assert rc == 1  # a row failed the gate
    cap = capsys.readouterr()
    assert "[1/2]" in cap.err and "done" in cap.err  # progress on stderr (not a tty here)
    assert "vs torch" in cap.out and "gate FAILED" in cap.out

    def no_nan(c):
        raise ValueError(c)
    doc = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    env = doc["env"]
    for key in ("device", "device_name", "cpu_model", "cpu_count", "threads", "torch", "cuda",
                "cudnn", "memory_metric", "fusedrnn_backend"):
        assert key in env
    assert env["device"] == "cpu" and env["threads"] >= 1 and env["torch"] == torch.__version__
    rows = doc["rows"]
    assert len(rows) == 2 * 3 and {r["peer"] for r in rows} == {"torch.nn", "copy", "wrong"}
    keys = {"id", "label", "config", "peer", "status", "note", "time_ms", "us_per_step", "tflops",
            "flops", "peak_mem_mb", "ratio_vs_torch", "max_abs_diff_vs_torch", "gate"}
    for r in rows:
        assert keys <= set(r)
        assert {"cell", "mode", "dtype", "device", "T", "B", "I", "H"} <= set(r["config"])
        if r["peer"] == "wrong":
            assert r["status"] == "failed" and r["ratio_vs_torch"] is None and r["time_ms"] is None
        else:
            assert r["status"] == "ok"
            assert isinstance(r["ratio_vs_torch"], float) and r["ratio_vs_torch"] > 0
            assert set(r["time_ms"]) == {"median", "min", "max"}
            assert r["tflops"] > 0 and r["us_per_step"] > 0
    md = (out / "results.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert "vs torch" in table[0] and len(table) == 1 + len(rows)
    assert sum("gate FAILED" in ln for ln in table) == 2
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["ratio_vs_batch.png", "ratio_vs_hidden.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000

    rc = bench.main(["--device", "cpu", "--shape", "4,2,3,4", "--cell", "gru", "--mode", "infer",
                     "--reps", "1", "--warmup", "0", "--no-progress", "--no-plot",
                     "--out", str(tmp_path / "ok")], peers=[good])
    assert rc == 0
    assert not list((tmp_path / "ok").glob("*.png"))
    assert capsys.readouterr().err == ""


def test_table_formatting():
    rows = [bench.make_row(cfg(), "torch.nn", "ok", "baseline",
                       stats={"median": 2e-3, "min": 1e-3, "max": 3e-3, "samples": 3,
                              "calls_per_sample": 1}, base_median=2e-3, mem=2**20, out_diff=0.0),
            bench.make_row(cfg(), "x", "skipped", "x: not installed")]
    text = bench.format_table(rows)
    assert "2.000" in text and "[1.000, 3.000]" in text and "1.00x" in text and "skipped" in text
    assert text.count("lstm train fp32 T=5") == 1  # config shown once per group on the terminal


# Runs `python -m fusedrnn.bench ARGS` in a fresh interpreter where `import matplotlib` fails.
WITHOUT_MATPLOTLIB = ("import runpy, sys; sys.modules['matplotlib'] = None; "
                      "runpy.run_module('fusedrnn.bench', run_name='__main__', alter_sys=True)")


def test_without_matplotlib_results_are_written_and_exit_is_0(tmp_path):
    """`python -m fusedrnn.bench --preset quick --device cpu --out DIR` without matplotlib:
    results.json and results.md, a one-line note instead of the plots, exit status 0."""
    out = tmp_path / "quick"
    argv = ["--preset", "quick", "--device", "cpu", "--out", str(out), "--no-progress",
            "--reps", "1", "--warmup", "0", "--min-sample-ms", "0", "--threads", "1"]
    proc = subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB] + argv, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["preset"] == "quick"
    statuses = {(r["peer"], r["status"]) for r in doc["rows"]}
    assert statuses >= {("torch.nn", "ok"), ("fusedrnn", "ok")}
    assert len([r for r in doc["rows"] if r["peer"] == "torch.nn"]) == 8  # every configuration ran
    md = (out / "results.md").read_text()
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == 1 + len(doc["rows"])
    assert "wrote " in proc.stdout and ".png" not in proc.stdout
    note = proc.stderr.strip().splitlines()
    assert len(note) == 1 and "matplotlib is not installed" in note[0], proc.stderr
    assert "pip install 'fusedrnn[bench]'" in note[0]


def test_time_calls_alternates_in_rotating_order():
    """The timing utility on plain callables: warm-up, one calibration call each, then
    one sample per callable per repetition, starting one later each time."""
    order = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    stats = bench.time_calls(calls, reps=3, warmup=2, device="cpu")
    assert order[:6] == list("abcabc") and order[6:9] == list("abc")
    assert order[9:] == list("abcbcacab")
    for s in stats.values():
        assert s["samples"] == 3 and s["calls_per_sample"] == 1
        assert 0 <= s["min"] <= s["median"] <= s["max"]
