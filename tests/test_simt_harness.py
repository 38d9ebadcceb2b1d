"""The SIMT harness catches what it exists to catch.

A standalone driver (csrc/simt/driver.cpp, no ATen) is built here from a copy of
csrc/cuda/, once clean and once per planted fault, plain or under a sanitizer as the
fault needs, and run on the persistent and step kernels. Each mutation must apply
exactly once, so a change to the kernels cannot leave this test checking nothing.
The clean build must be silent under every sanitizer, and each launch rule of the
runtime must stop a kernel that breaks it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.simt, pytest.mark.harness,
              pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")]


def _build_flags():
    spec = importlib.util.spec_from_file_location("simt_build", ROOT / "csrc/simt/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


VARIANTS = _build_flags()  # the flags of the extension's own sanitizer builds
SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
                 "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
                 "TSAN_OPTIONS": "halt_on_error=1"}

# name: (file in csrc/cuda, text, replacement). Each is a bug the harness must catch.
FAULTS = {
    # h_s read before every thread staged it: a race in shared memory
    "missing-syncthreads": ("persistent.cuh",
                            "      stage_h(h_s, h_prev, b0, rows, groups * kBatchGroup, H);\n"
                            "      __syncthreads();\n",
                            "      stage_h(h_s, h_prev, b0, rows, groups * kBatchGroup, H);\n"),
    # the next step reads h before other blocks wrote it: a race in global memory
    "missing-grid-sync": ("persistent.cuh", "    if (!last) grid.sync();", "    (void)grid;"),
    # the zero fill writes one element past the staged h tile, the end of shared memory
    "staging-overrun": ("persistent.cuh", "i < n_padded; i += blockDim.x",
                        "i <= n_padded; i += blockDim.x"),
    # the gates read one element further on: past the end of xproj for the last element
    "gate-offset": ("step_kernels.cuh", "in.x[g] = p.xproj[b * G * H + g * H + j];",
                    "in.x[g] = p.xproj[b * G * H + g * H + j + 1];"),
    # one block leaves the step loop's barrier out: an inter-block deadlock
    "block-skips-grid-sync": ("persistent.cuh", "    if (!last) grid.sync();",
                              "    if (!last && blockIdx.x != 1) grid.sync();"),
}


class Driver:
    """Builds drivers in a temporary folder: one runtime object per variant, one
    driver per (variant, fault)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _compile(self, args, output: Path) -> Path:
        if not output.exists():
            cmd = ["g++", "-std=c++20", "-pthread", *args, "-o", str(output)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
        return output

    def runtime(self, variant: str) -> Path:
        flags = VARIANTS[variant]["runtime"]
        return self._compile([*flags, f"-I{ROOT}/csrc", "-c", str(ROOT / "csrc/simt/runtime.cpp")],
                             self.folder / f"runtime-{variant}.o")

    def sources(self, fault: str | None) -> Path:
        """A copy of csrc/cuda with the fault planted (exactly once)."""
        folder = self.folder / f"cuda-{fault or 'clean'}"
        if not folder.exists():
            shutil.copytree(ROOT / "csrc/cuda", folder)
            if fault:
                name, text, replacement = FAULTS[fault]
                source = (folder / name).read_text()
                assert source.count(text) == 1, f"fault {fault}: the text to replace is gone"
                (folder / name).write_text(source.replace(text, replacement))
        return folder

    def build(self, variant: str, fault: str | None = None) -> Path:
        v = VARIANTS[variant]
        return self._compile([*v["kernel"], f"-I{self.sources(fault)}", f"-I{ROOT}/csrc",
                              f"-I{ROOT}/csrc/include", str(ROOT / "csrc/simt/driver.cpp"),
                              str(self.runtime(variant)), *v["link"]],
                             self.folder / f"driver-{variant}-{fault or 'clean'}")

    def run(self, variant: str, mode: str, fault: str | None = None):
        env = {**os.environ, **SANITIZER_ENV}
        result = subprocess.run([str(self.build(variant, fault)), mode], capture_output=True,
                                text=True, env=env, timeout=300)
        return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return Driver(tmp_path_factory.mktemp("simt-driver"))


KERNEL_MODES = ["persistent-lstm", "persistent-gru", "step-lstm"]


@pytest.mark.parametrize("variant", ["plain", "asan", "tsan"])
def test_clean_kernels_match_and_are_silent(driver, variant):
    for mode in KERNEL_MODES:
        rc, out = driver.run(variant, mode)
        assert rc == 0 and "Sanitizer" not in out and "runtime error" not in out, f"{mode}:\n{out}"
        assert out.count("OK ") >= 2, out


def test_missing_syncthreads_is_a_race_and_wrong(driver):
    rc, out = driver.run("tsan", "persistent-lstm", "missing-syncthreads")
    assert "ThreadSanitizer: data race" in out and "persistent.cuh" in out, out
    rc, out = driver.run("plain", "persistent-lstm", "missing-syncthreads")
    assert rc == 1 and "MISMATCH" in out, out  # unstaged shared memory reads NaN


def test_missing_grid_sync_is_a_race_on_the_h_workspace(driver):
    rc, out = driver.run("tsan", "persistent-gru", "missing-grid-sync")
    assert "ThreadSanitizer: data race" in out and "stage_h" in out and "__ldcg" in out, out


def test_staging_overrun_is_a_shared_memory_overflow(driver):
    rc, out = driver.run("asan", "persistent-lstm", "staging-overrun")
    assert rc != 0 and "AddressSanitizer: heap-buffer-overflow" in out, out
    assert "stage_h" in out, out


def test_gate_offset_is_an_out_of_bounds_read(driver):
    rc, out = driver.run("asan", "step-lstm", "gate-offset")
    assert rc != 0 and "AddressSanitizer: heap-buffer-overflow" in out, out
    assert "READ" in out and "forward_kernel<fusedrnn::cells::Lstm" in out, out


def test_block_skipping_the_grid_barrier_is_an_error(driver):
    rc, out = driver.run("plain", "persistent-lstm", "block-skips-grid-sync")
    assert rc == 2 and "grid.sync()" in out and "exited without reaching" in out, out


def test_race_between_blocks_of_an_ordinary_launch_is_reported(driver):
    """Blocks of a non-cooperative grid run one after another on one OS thread, with
    thread identities reused from the launch before: neither may hide their race."""
    rc, out = driver.run("tsan", "block-race")
    assert "ThreadSanitizer: data race" in out and "block_race_kernel" in out, out


RULES = {
    "deadlock": "deadlock in block",
    "divergent": "divergent __syncthreads()",
    "partial-mask": "only the full mask",
    "exit-at-grid": "exited without reaching",
    "watchdog": "watchdog",
    "too-large": "too large",
    "shared-limit": "exceed this kernel's limit",
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_launch_rule_is_enforced(driver, rule):
    rc, out = driver.run("plain", rule)
    assert rc == 2 and "SIMT ERROR" in out and RULES[rule] in out, out
