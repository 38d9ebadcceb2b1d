"""gpu_check/check_ptxas.py, the static limits CI applies to every CUDA build:
a clean report passes, and each limit fails when crossed."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "gpu_check" / "check_ptxas.py"
_SPEC = importlib.util.spec_from_file_location("check_ptxas", _PATH)
check_ptxas = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(check_ptxas)

STEP = "_ZN8fusedrnn4cuda4step19lstm_forward_kernelIfEEvNS_15LstmForwardStepIT_EE"
PERSISTENT = "_ZN8fusedrnn4cuda10persistent25persistent_forward_kernelINS1_10LstmPolicyIfEEEEvNT_6ParamsENS1_6TilingEPNS5_5ValueE"


def report(kernel, registers=32, spills=(0, 0), smem=None):
    usage = f"ptxas info    : Used {registers} registers, used 1 barriers"
    if smem is not None:
        usage += f", {smem} bytes smem"
    return (f"ptxas info    : Compiling entry function '{kernel}' for 'sm_90'\n"
            f"ptxas info    : Function properties for {kernel}\n"
            f"    0 bytes stack frame, {spills[0]} bytes spill stores, {spills[1]} bytes spill loads\n"
            f"{usage}\n")


def run(tmp_path, log):
    path = tmp_path / "build.log"
    path.write_text(log)
    return check_ptxas.main(["check_ptxas", str(path)])


def test_clean_report_passes(tmp_path):
    assert run(tmp_path, report(STEP) + report(PERSISTENT, registers=126)) == 0


def test_no_recompiled_cuda_file_passes(tmp_path):
    assert run(tmp_path, "[1/1] c++ -c csrc/ops.cpp\n") == 0


@pytest.mark.parametrize("log", [
    report(STEP, spills=(8, 0)),
    report(STEP, spills=(0, 4)),
    report(PERSISTENT, registers=130),         # 130 x 512 threads > 64K registers
    report(STEP, registers=300),
    report(STEP, smem=49 * 1024),
    report("_ZN8fusedrnn4cuda15unknown_kernelEv"),  # no block size known
], ids=["spill-stores", "spill-loads", "registers-x-threads", "registers", "static-smem",
        "unknown-kernel"])
def test_each_limit_fails(tmp_path, log):
    assert run(tmp_path, report(STEP) + log) == 1
