"""The analytic cost model of the CUDA paths (fusedrnn/cost_model.py).

Its arithmetic (monotonic where it must be, the terms adding up, the goal shapes'
orderings the design relies on), and its description of the code: the kernel launches
and per-step GEMMs it counts are the ones the step loop makes, counted on the SIMT
build (its runtime counts every launch; the profiler sees every ATen mm/addmm).
"""

from __future__ import annotations

import copy

import pytest
import torch

import fusedrnn
from fusedrnn import ops, registration
from fusedrnn import cost_model as model
from fusedrnn.bench import configs
from conftest import TOL, assert_results_close, run
from devices import simt_marks

def test_gate_counts_are_the_cells():
    """The model (torch-free, for the harness) counts the cells' gates as the ops do."""
    assert model.GATES == {name: cell.gates for name, cell in registration.CELLS.items()}


GOAL_TRAIN = dict(cell="lstm", mode="train", dtype="bfloat16", T=1024, B=16, I=768, H=768)
FASTRNNS = dict(cell="lstm", mode="train", dtype="float32", T=100, B=64, I=512, H=512)


@pytest.mark.parametrize("path", model.PATHS)
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_total_time_grows_with_steps_and_batch(path, mode):
    def total(**kw):
        shape = dict(cell="lstm", mode=mode, dtype="float32", T=64, B=16, I=256, H=256) | kw
        return model.estimate(**shape, path=path)["total_us"]
    times = [total(T=t) for t in (1, 2, 16, 256, 1024)]
    assert all(a < b for a, b in zip(times, times[1:]))
    batches = [total(B=b) for b in (1, 16, 64, 256)]
    assert all(a <= b for a, b in zip(batches, batches[1:]))
    assert total(B=256) > total(B=1)


def test_terms_add_up_to_the_total():
    e = model.estimate(**GOAL_TRAIN)
    per_step = e["forward_step_us"] + e["backward_step_us"] + e["gemm_us"]
    assert e["total_us"] == pytest.approx(GOAL_TRAIN["T"] * per_step)
    assert e["us_per_step"] == pytest.approx(per_step)
    two_layers = model.estimate(**GOAL_TRAIN, layers=2)
    assert two_layers["forward_step_us"] == pytest.approx(2 * e["forward_step_us"])
    bi = model.estimate(**GOAL_TRAIN, bidirectional=True)
    assert bi["backward_step_us"] == pytest.approx(2 * e["backward_step_us"])


def test_standard_step_is_bound_by_the_host_at_small_batch():
    """Launch-bound: the step costs its launches and cuBLAS calls, whatever the dtype."""
    fig = model.H100
    for dtype in ("float32", "bfloat16"):
        step = model.standard_forward_step_us("lstm", 16, 768, dtype, "float32", True)
        expected_host = fig.cublas_host_us + fig.launch_host_us
        assert step["host_us"] == pytest.approx(expected_host)
        assert step["step_us"] == step["host_us"] > step["device_us"]
    slower_host = model.with_figures(cublas_host_us=2 * fig.cublas_host_us)
    assert (model.estimate(**GOAL_TRAIN, fig=slower_host)["us_per_step"]
            > model.estimate(**GOAL_TRAIN)["us_per_step"])


def test_half_gemms_on_tensor_cores_cut_the_all_steps_gemms():
    converted = model.estimate(**GOAL_TRAIN)
    native = model.estimate(**GOAL_TRAIN, half_on_tensor_cores=True)
    assert converted["gemm_mode"] == "float32" and native["gemm_mode"] == "bfloat16"
    # 989 vs 67 TFLOP/s peak: the same efficiency on both.
    assert converted["gemm_us"] / native["gemm_us"] == pytest.approx(989 / 67)
    assert model.gemm_mode("float32", True, True) == "tf32"
    assert model.gemm_mode("float32", False, True) == "float32"
    assert model.gemm_mode("float64", True, True) == "float64"


def test_the_designed_persistent_path_is_the_one_that_reaches_the_goals():
    """The goals of the issue, as the model sees them (estimates, to be timed on a GPU):
    the designed persistent path under 2 us per step at B <= 16 in inference, and well
    below the standard path in bf16 training; today's persistent forward is slower than
    the standard one at the fastrnns shape."""
    for B in (1, 4, 16):
        infer = dict(GOAL_TRAIN, mode="infer", B=B)
        assert model.estimate(**infer, path="persistent-designed")["us_per_step"] < 2.0
    designed = model.estimate(**GOAL_TRAIN, path="persistent-designed")["us_per_step"]
    standard = model.estimate(**GOAL_TRAIN, half_on_tensor_cores=True)["us_per_step"]
    assert designed < standard / 2
    fast_infer = dict(FASTRNNS, mode="infer")
    assert (model.estimate(**fast_infer, path="persistent")["forward_step_us"]
            > model.estimate(**fast_infer)["forward_step_us"])


def test_today_persistent_forward_is_bound_by_shared_memory_not_the_barrier():
    step = model.persistent_forward_today_us("lstm", 16, 768, "float32")
    assert step["compute_us"] > step["barrier_us"]
    designed = model.persistent_forward_designed_us("lstm", 16, 768, "bfloat16")
    assert designed["compute_us"] < designed["barrier_us"]


def test_harness_fields():
    cuda_bf16 = configs.Config("lstm", "train", "bfloat16", "cuda", 1024, 16, 768, 768)
    cpu_fp32 = configs.Config("gru", "infer", "float32", "cpu", 8, 2, 4, 4)
    assert model.model_us_per_step("fusedrnn", cpu_fp32, False, False) is None
    assert model.model_us_per_step("torch.nn", cuda_bf16, False, False) is None
    assert model.model_us_per_step("fusedrnn", cuda_bf16, False, False) == pytest.approx(
        model.estimate_config(cuda_bf16, "standard", False, model.HALF_GEMMS_NATIVE)["us_per_step"])
    assert model.precision_mode("torch.nn", cuda_bf16, False, True) == "cudnn bf16"
    cuda_fp32 = configs.Config("lstm", "train", "float32", "cuda", 100, 64, 512, 512)
    assert model.precision_mode("torch.nn", cuda_fp32, False, True) == "cudnn tf32"
    assert model.precision_mode("fusedrnn", cuda_fp32, True, False) == "tf32 gemm"
    assert model.precision_mode("fusedrnn", cuda_fp32, False, True) == "fp32 gemm"
    assert model.precision_mode("fusedrnn", cpu_fp32, True, True) == "fp32 gemm"
    assert model.precision_mode("flashrnn", cuda_fp32, True, True) is None


# ------------------------------------------- the model's counts against the code

def _simt_launches() -> int:
    return sum(torch.ops.fusedrnn_simt_debug.launch_counts()[1])


def _per_step_gemms(fn) -> int:
    """ATen mm/addmm calls (cuBLAS calls on CUDA) made by fn()."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::mm", "aten::addmm", "aten::addmm_")
    return sum(e.count for e in prof.key_averages() if e.key in names)


def _lstm_args(T, B, H, lengths):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(T, B, H)
    return dict(input=x, w_ih=r(4 * H, H), bias=r(4 * H), w_hh=r(4 * H, H), w_hr=None,
                h0=r(B, H), c0=r(B, H),
                lengths=torch.tensor([T] + [max(T - 2, 1)] * (B - 1)) if lengths else None)


def _gru_args(T, B, H, lengths):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(input=r(T, B, H), w_ih=r(3 * H, H), b_ih=r(3 * H), w_hh=r(3 * H, H),
                b_hh=r(3 * H), h0=r(B, H),
                lengths=torch.tensor([T] + [max(T - 2, 1)] * (B - 1)) if lengths else None)


def _run_forward_backward(cell, a, T, B, H):
    op = torch.ops.fusedrnn_simt
    if cell == "lstm":
        fwd = lambda: op.lstm_forward(a["input"], a["w_ih"], a["bias"], a["w_hh"], None,  # noqa: E731
                                      a["h0"], a["c0"], a["lengths"], False, True, "steps")
        out = fwd()
        g = torch.ones(T, B, H)
        bwd = lambda: op.lstm_backward(g, torch.zeros(B, H), torch.zeros(B, H), a["input"],  # noqa: E731
                                       a["w_ih"], a["bias"], a["w_hh"], None, a["h0"], a["c0"],
                                       out[0], out[3], out[4], a["lengths"], False, True, "steps")
    else:
        fwd = lambda: op.gru_forward(a["input"], a["w_ih"], a["b_ih"], a["w_hh"], a["b_hh"],  # noqa: E731
                                     a["h0"], a["lengths"], False, True, "steps")
        out = fwd()
        g = torch.ones(T, B, H)
        bwd = lambda: op.gru_backward(g, torch.zeros(B, H), a["input"], a["w_ih"], a["b_ih"],  # noqa: E731
                                      a["w_hh"], a["b_hh"], a["h0"], out[0], out[2], a["lengths"],
                                      False, True, "steps")
    return fwd, bwd


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=simt_marks())], ids=["simt"])
def test_launches_and_gemms_per_step_match_the_code(cell, lengths, _):
    """Per step of the standard loop: the model's kernel launches (SIMT launch counter)
    and cuBLAS calls (profiler), from the difference between T = 6 and T = 3."""
    with ops.using_backend("simt"):
        B, H = 3, 8
        counts = {}
        for T in (3, 6):
            args = (_lstm_args if cell == "lstm" else _gru_args)(T, B, H, lengths)
            fwd, bwd = _run_forward_backward(cell, args, T, B, H)
            before = _simt_launches()
            gemms_fwd = _per_step_gemms(fwd)
            mid = _simt_launches()
            gemms_bwd = _per_step_gemms(bwd)
            counts[T] = (mid - before, gemms_fwd, _simt_launches() - mid, gemms_bwd)
        per_step = [(b - a) / 3 for a, b in zip(counts[3], counts[6])]
    fwd_work = model.standard_forward_work(cell)
    bwd_work = model.standard_backward_work(cell, lengths=lengths)
    assert per_step == [fwd_work.kernels, fwd_work.gemms, bwd_work.kernels, bwd_work.gemms]


def test_path_rule_follows_the_model():
    """Small batches take today's persistent forward (the standard step is bound by
    its launches), large ones the standard loop (the persistent kernel by its
    shared-memory pipe); a cheaper barrier can only favour the persistent path."""
    shape = dict(cell="lstm", mode="infer", dtype="bfloat16", T=1024, I=768, H=768)
    assert model.choose_path(**shape, B=1) == "persistent"
    assert model.choose_path(**shape, B=64) == "standard"
    slow_barrier = model.with_figures(grid_sync_us=20.0)
    assert model.choose_path(**shape, B=1, fig=slow_barrier) == "standard"


# ------------------------------------------------------- the dispatch rule


@pytest.fixture
def model_mode():
    previous = ops.persistent_mode()
    ops.set_persistent("model")
    yield
    ops.set_persistent(previous)


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_model_mode_takes_the_models_path(cell, train, dtype, model_mode):
    """``set_persistent("model")``: where the CUDA kernels run, each layer takes the path
    ``model.choose_path`` estimates faster; both answers occur across these shapes. On
    the CPU the measured rule stays (persistent loop from two steps)."""
    shapes = [(100, 4, 128, 128), (100, 256, 512, 512)]
    mode, name = "train" if train else "infer", str(dtype).removeprefix("torch.")
    with ops.using_backend("simt"):
        taken = [ops.path_request(torch.empty(T, B, I, dtype=dtype), cell, H, train)
                 == "persistent" for T, B, I, H in shapes]
    assert taken == [model.choose_path(cell, mode, name, *shape) == "persistent"
                     for shape in shapes]
    assert taken == [True, False]
    # the CPU's own rule, in the ops' plan
    assert "path=cpu_persistent" in ops.layer_plan(cell, torch.empty(2, 1, 1), 8, train)
    assert "path=cpu_persistent" not in ops.layer_plan(cell, torch.empty(1, 1, 1), 8, train)


@pytest.mark.parametrize("_", [pytest.param(None, marks=simt_marks())], ids=["simt"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_model_mode_runs_the_chosen_kernels(kind, _, model_mode):
    """A module under the model's rule on the CUDA kernels (SIMT): the small shape takes
    the persistent kernel (no fallback counted) and matches the reference."""
    torch.manual_seed(0)
    module = getattr(fusedrnn, kind)(5, 8, num_layers=2).double()
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    with ops.using_backend("simt"):
        before = torch.ops.fusedrnn_simt_debug.persistent_fallbacks()
        actual = run(module, x)
        assert torch.ops.fusedrnn_simt_debug.persistent_fallbacks() == before
        assert "path=cuda_persistent" in ops.layer_plan(kind.lower(), x, 8, True)
    with ops.using_backend("reference"):
        expected = run(copy.deepcopy(module), x)
    assert_results_close(actual, expected, TOL[torch.float64], kind)
