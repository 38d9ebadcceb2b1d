"""Every CUDA kernel ran on the SIMT target in this session (conftest runs this last).

The kernels are listed from the sources (every ``__global__`` in csrc/cuda/), their
instantiations from the SIMT library's symbol table (it compiles the same .cu files as
the CUDA build, so float and double both), and the launches from the SIMT runtime's
counts, mapped to symbols by address (with those of the shards named by
``FUSEDRNN_SIMT_LAUNCH_LOGS``: tests/run_sanitized.sh). A kernel the tests never
launched fails the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from devices import SANITIZER, simt_marks
from fusedrnn import ops

ROOT = Path(__file__).resolve().parents[1]
GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(")

pytestmark = [*simt_marks(),
              pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")]


def source_kernels() -> set[str]:
    names = set()
    for path in sorted((ROOT / "csrc" / "cuda").glob("*.cu*")):
        names.update(GLOBAL.findall(path.read_text()))
    return names


def kernel_symbols(library: str, kernels: set[str]) -> dict[int, str]:
    """``{address: demangled name}`` of the kernel instantiations defined in ``library``."""
    out = subprocess.run(["nm", "-C", "--defined-only", library], capture_output=True,
                         text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        address, _, name = line.split(" ", 2) if line.count(" ") >= 2 else ("", "", "")
        base = re.search(r"(\w+)(?:<.*>)?\(", name)
        if base and base.group(1) in kernels and "[clone" not in name:
            found[int(address, 16)] = name
    return found


def simt_library() -> str:
    with ops.using_backend("simt"):
        return torch.ops.fusedrnn_simt_debug.library_path()


def test_the_source_list_is_complete():
    """The list the check relies on: the kernels the project has today, so that a
    change of the declaration style cannot empty it silently."""
    assert {"forward_kernel", "backward_kernel", "backward_fused_kernel",
            "projected_commit_kernel", "grad_h_accumulate_kernel", "grad_h_carry_kernel",
            "grad_h_combine_kernel", "persistent_forward_kernel", "persistent_backward_kernel",
            "barrier_kernel", "norm_forward_kernel", "norm_backward_kernel"} \
        <= source_kernels()


def test_simt_instantiates_the_cuda_builds_kernels():
    """The SIMT library holds the same kernel instantiations as the CUDA build."""
    if "cuda:" not in torch.ops.fusedrnn.build_info():
        pytest.skip("fusedrnn._C was built without CUDA")
    kernels = source_kernels()
    cuda = set(kernel_symbols(str(next((ROOT / "fusedrnn").glob("_C*.so"))), kernels).values())
    simt = set(kernel_symbols(simt_library(), kernels).values())
    assert cuda == simt, f"only in CUDA: {cuda - simt}; only in SIMT: {simt - cuda}"


def test_every_cuda_kernel_was_launched():
    kernels = source_kernels()
    library = simt_library()
    instantiations = kernel_symbols(library, kernels)
    missing = kernels - {re.search(r"(\w+)(?:<.*>)?\(", n).group(1)
                         for n in instantiations.values()}
    assert not missing, f"kernels not compiled into the SIMT library: {sorted(missing)}"
    offsets, counts = torch.ops.fusedrnn_simt_debug.launch_counts()
    launched = {offset for offset, count in zip(offsets, counts) if count > 0}
    for log in filter(None, os.environ.get("FUSEDRNN_SIMT_LAUNCH_LOGS", "").split(":")):
        with open(log) as f:  # the shards of tests/run_sanitized.sh
            launched |= {int(offset) for offset, count in json.load(f).items() if count > 0}
    never = sorted(name for address, name in instantiations.items() if address not in launched)
    assert not never, "never launched by the simt tests:\n  " + "\n  ".join(never)


@pytest.mark.skipif(not SANITIZER, reason="checks the sanitizer runs (tests/run_sanitized.sh)")
def test_the_sanitizer_build_is_what_runs():
    """The library these tests ran calls the sanitizer on every memory access."""
    hook = {"asan": "__asan_report_load8", "tsan": "__tsan_read8"}[SANITIZER]
    out = subprocess.run(["nm", "-D", "--undefined-only", simt_library()], capture_output=True,
                         text=True, check=True).stdout
    assert hook in out
