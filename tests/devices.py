"""The devices the kernel tests run on, as a test parameter.

* ``cpu``: the C++ CPU kernels (backend "fused", CPU tensors): the step loop, and the
  persistent CPU loop (``cpu-persistent``);
* ``simt``: the CUDA kernel sources run on the CPU (backend "simt", CPU tensors;
  csrc/simt/), marked ``simt``;
* ``cuda``: a GPU (backend "fused", CUDA tensors), marked ``cuda``, skipped without one.

``simt`` and ``cuda`` also run the persistent kernels (``simt-persistent``,
``cuda-persistent``). A test takes the ``device`` fixture (the step loop on every
device) or ``device_path`` (also the persistent path), gets a :class:`Target`, makes its
tensors with ``target.tensor_device`` and computes what it expects on the CPU.

Sanitizer runs (tests/run_sanitized.sh) load a sanitizer build of the SIMT library;
under ThreadSanitizer the emulated GPU has 2 SMs, which keeps every persistent grid at
2 blocks x 512 threads (TSan's fibers cost ~0.8 MB each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from fusedrnn import ops

SANITIZER = os.environ.get("FUSEDRNN_SIMT_SANITIZER", "")  # "", "asan" or "tsan"
# Where the SIMT library is required (make test): a missing build fails, never skips.
REQUIRE_SIMT = os.environ.get("FUSEDRNN_REQUIRE_SIMT") == "1" or bool(SANITIZER)
H100 = (132, 228 * 1024, 227 * 1024)  # SMs, shared memory per SM, per block (opt-in)
SIMT_DEVICE = (2, 228 * 1024, 227 * 1024) if SANITIZER == "tsan" else H100


def simt_available() -> bool:
    try:
        with ops.using_backend("simt"):
            return True
    except RuntimeError:
        return False


def simt_marks():
    marks = [pytest.mark.simt]
    if not REQUIRE_SIMT:
        marks.append(pytest.mark.skipif(
            not simt_available(), reason="SIMT library not built (python csrc/simt/build.py)"))
    return marks


def _cuda_marks():
    return [pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def _param(name: str, persistent: bool):
    marks = {"cpu": [], "simt": simt_marks(), "cuda": _cuda_marks()}[name]
    return pytest.param((name, persistent), id=name + ("-persistent" if persistent else ""),
                        marks=marks)


DEVICES = [_param(name, False) for name in ("cpu", "simt", "cuda")]
DEVICE_PATHS = [_param(name, persistent) for name in ("cpu", "simt", "cuda")
                for persistent in (False, True)]
KERNEL_DEVICES = DEVICES[1:]  # the ones running the CUDA kernel sources
ACCELERATED_PATHS = [_param("simt", True), _param("cuda", True)]


@dataclass(frozen=True)
class Target:
    name: str  # "cpu", "simt" or "cuda"
    persistent: bool

    @property
    def tensor_device(self) -> str:
        return "cuda" if self.name == "cuda" else "cpu"

    @property
    def debug(self):
        """The debug ops of the library that runs the kernels."""
        return torch.ops.fusedrnn_simt_debug if self.name == "simt" else torch.ops.fusedrnn_debug

    def to(self, obj):
        """``obj`` (a tensor, module, tuple or None) on this target's device."""
        if obj is None:
            return None
        if isinstance(obj, tuple):
            return tuple(self.to(t) for t in obj)
        return obj.to(self.tensor_device)


def activate(name: str, persistent: bool):
    """Run the test on this device: the backend, the kernel path and, for SIMT, the
    emulated GPU of this session, all restored afterwards."""
    target = Target(name, persistent)
    with ops.using_backend("simt" if name == "simt" else "fused"):
        if name == "simt":
            torch.ops.fusedrnn_simt_debug.set_device(*SIMT_DEVICE)
        ops.set_persistent("on" if persistent else "off")
        try:
            yield target
        finally:
            ops.set_persistent("auto")
            if name != "cpu":
                target.debug.set_persistent_tiling(0, 0)


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device, the step loop."""
    yield from activate(*request.param)


@pytest.fixture(params=DEVICE_PATHS)
def device_path(request):
    """Each device and kernel path: cpu, cpu-persistent, simt, simt-persistent, cuda,
    cuda-persistent."""
    yield from activate(*request.param)


@pytest.fixture(params=KERNEL_DEVICES)
def kernel_device(request):
    """The devices that run the CUDA kernel sources: simt and cuda."""
    yield from activate(*request.param)


@pytest.fixture(params=ACCELERATED_PATHS)
def persistent_device(request):
    """The persistent kernels, on simt and cuda."""
    yield from activate(*request.param)
