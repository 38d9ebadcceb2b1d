"""Static limits of the CUDA kernels, from ptxas's report in a build log.

    FUSEDRNN_PTXAS_VERBOSE=1 python setup.py build_ext --inplace 2>&1 | tee build.log
    python gpu_check/check_ptxas.py build.log

Fails (exit 1) on any kernel with spill stores or loads, more than 255
registers, registers x threads per block beyond an sm_90 SM's 64K registers,
or more than 48 KB of static shared memory. Dynamic shared memory is planned
at run time against the device's limit (csrc/cuda/persistent.cuh). A build
that recompiled no .cu file prints no report and passes. Run by `make build`
(so CI checks every fresh build) and by gpu_check/run.sh.
"""

from __future__ import annotations

import re
import sys

REGISTERS_PER_SM = 64 * 1024  # sm_90
MAX_REGISTERS = 255
MAX_STATIC_SHARED = 48 * 1024

# Threads per block of each kernel (mangled-name fragment -> block size): the
# __launch_bounds__ or launch configuration in csrc/cuda/. A new kernel must
# be added here, so that its register budget is checked.
BLOCK_SIZES = {
    "persistent_forward_kernel": 512,  # persistent.cuh, kThreads
    "persistent_backward_kernel": 512,  # persistent_backward.cuh (persistent.cuh's kThreads)
    "barrier_kernel": 512,             # persistent_barrier.cu, kThreads
    "4cuda4step": 256,                 # step_kernels.cuh (namespace cuda::step), kThreads
}

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse(log: str) -> dict:
    """{(kernel, arch): {"spill_stores", "spill_loads", "registers", "smem"}} from the log."""
    kernels, current = {}, None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = (m.group(1), m.group(2))
            kernels[current] = {"spill_stores": 0, "spill_loads": 0, "registers": 0, "smem": 0}
        elif current and (m := SPILLS.search(line)):
            kernels[current]["spill_stores"] = int(m.group(1))
            kernels[current]["spill_loads"] = int(m.group(2))
        elif current and (m := USAGE.search(line)):
            kernels[current]["registers"] = int(m.group(1))
            kernels[current]["smem"] = int(m.group(2) or 0)
    return kernels


def block_size(kernel: str) -> int | None:
    matches = [size for fragment, size in BLOCK_SIZES.items() if fragment in kernel]
    return matches[0] if len(matches) == 1 else None


def problems(kernel: str, use: dict) -> list:
    found = []
    if use["spill_stores"] or use["spill_loads"]:
        found.append(f"spills ({use['spill_stores']} bytes stored, {use['spill_loads']} loaded)")
    if use["registers"] > MAX_REGISTERS:
        found.append(f"{use['registers']} registers > {MAX_REGISTERS}")
    threads = block_size(kernel)
    if threads is None:
        found.append("no block size known: add it to BLOCK_SIZES in gpu_check/check_ptxas.py")
    elif use["registers"] * threads > REGISTERS_PER_SM:
        found.append(f"{use['registers']} registers x {threads} threads > {REGISTERS_PER_SM}")
    if use["smem"] > MAX_STATIC_SHARED:
        found.append(f"{use['smem']} bytes of static shared memory > {MAX_STATIC_SHARED}")
    return found


def main(argv: list) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    with open(argv[1], encoding="utf-8", errors="replace") as f:
        kernels = parse(f.read())
    if not kernels:
        print("check_ptxas: no ptxas report in the log (no .cu file was recompiled)")
        return 0
    failed = 0
    for (kernel, arch), use in sorted(kernels.items()):
        found = problems(kernel, use)
        status = "FAIL " + "; ".join(found) if found else "ok"
        print(f"{arch} {use['registers']:3d} regs {use['smem']:6d} B smem "
              f"{use['spill_stores'] + use['spill_loads']:4d} B spilled  {kernel}: {status}")
        failed += bool(found)
    print(f"check_ptxas: {len(kernels)} kernels, {failed} over the limits")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
