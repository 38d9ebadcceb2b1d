"""Build fusedrnn._C: the CPU kernels always, the CUDA kernels whenever a CUDA
toolkit is found and torch is a CUDA build (GPU present or not).

Environment:
  FUSEDRNN_SKIP_CUDA_BUILD=1   build the CPU kernels only
  TORCH_CUDA_ARCH_LIST         CUDA archs; default: the visible GPUs', else 9.0
  FUSEDRNN_PTXAS_VERBOSE=1     print ptxas register/spill reports
  MAX_JOBS                     parallel compile jobs (ninja)

Build with `pip install --no-build-isolation .` (or `python -m build
--no-isolation`) so the extension compiles against the torch already
installed; the package then requires that torch version (the C++ ABI).
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """CUDA_HOME as torch should see it; the nvcc on PATH may be a wrapper."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and os.path.exists(os.path.join(os.environ[var], "bin", "nvcc")):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


# torch.utils.cpp_extension reads CUDA_HOME when it is imported.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _with_cuda():
    if os.environ.get("FUSEDRNN_SKIP_CUDA_BUILD", "0") == "1":
        return False
    return _cuda_home is not None and torch.version.cuda is not None


def _extra_include_dirs():
    """The cuBLAS/cuSPARSE headers that ATen/cuda needs ship in torch's nvidia/* pip
    dependencies (nvidia/cu13/include for CUDA 13, nvidia/cublas/include for 12):
    every such include folder that holds cublas_v2.h or cusparse.h."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/*/include", "nvidia/*/*/include"):
            for cand in sorted(glob.glob(os.path.join(site, pattern))):
                has_headers = any(os.path.exists(os.path.join(cand, h))
                                  for h in ("cublas_v2.h", "cusparse.h"))
                if has_headers and cand not in dirs:
                    dirs.append(cand)
    return dirs


def _default_arch_list():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    if torch.cuda.is_available():
        return  # torch builds for the visible GPUs
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"  # never torch's "every arch"


def make_extension():
    with_cuda = _with_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/layer/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # OpenMP: without it ATen's parallel_for in our sources runs on one thread.
    # The library binds to the libgomp torch has already loaded.
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link = ["-fopenmp"]
    if not with_cuda:
        return CppExtension(
            "fusedrnn._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    _default_arch_list()
    sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    if os.environ.get("FUSEDRNN_PTXAS_VERBOSE") == "1":
        nvcc.append("-Xptxas=-v")
    return CUDAExtension(
        "fusedrnn._C",
        sources,
        include_dirs=include_dirs + _extra_include_dirs(),
        define_macros=[("FUSEDRNN_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=link,
    )


def requirements() -> list:
    """The compiled kernels link against this torch's C++ ABI: pin its release."""
    release = torch.__version__.split("+")[0]
    return [f"torch=={release}", "numpy"]


class BuildExt(BuildExtension):
    """Compiles the `*_avx2.cpp` and `*_avx512.cpp` files with their
    instruction-set flags (ninja takes one flag set for all sources), then
    builds the extension as usual. That code runs only where ATen's CPU
    capability says the CPU has it (csrc/cpu/step_kernels.cpp)."""

    ISA_FLAGS = {
        "_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
        "_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    }

    def build_extensions(self):
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        common = ["-O3", "-std=c++20", "-fPIC", "-fvisibility=hidden",
                  f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
        for ext in self.extensions:
            for suffix, flags in self.ISA_FLAGS.items():
                isa_sources = [s for s in ext.sources if s.endswith(suffix)]
                if not isa_sources or not x86:
                    continue
                ext.sources = [s for s in ext.sources if s not in isa_sources]
                ext.extra_objects += self.compiler.compile(
                    isa_sources, output_dir=self.build_temp, include_dirs=ext.include_dirs,
                    extra_postargs=common + flags)
        super().build_extensions()


setup(
    packages=find_packages(include=["fusedrnn", "fusedrnn.*"]),
    ext_modules=[make_extension()],
    install_requires=requirements(),
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
