"""Build the SIMT extension: the CUDA kernel sources run on the CPU.

The extension is the layer driver (``csrc/layer/``) and the op registration compiled with
``FUSEDRNN_SIMT`` (ops ``torch.ops.fusedrnn_simt.*`` on CPU tensors), linked
with every ``csrc/cuda/*.cu`` compiled as host C++ and the SIMT runtime
(``csrc/simt/``). Three variants:

  plain  -> fusedrnn/_simt<ext>          (``import fusedrnn._simt``)
  asan   -> build/simt/asan/_simt.so     AddressSanitizer + UndefinedBehaviorSanitizer
  tsan   -> build/simt/tsan/_simt.so     ThreadSanitizer

Only the kernels and the runtime differ between variants; the ATen-heavy
objects are compiled once. A sanitizer variant is loaded into Python with its
runtime preloaded (``tests/sanitized.sh`` shows how).

Usage: python csrc/simt/build.py [plain] [asan] [tsan]   (default: all three)
Environment: MAX_JOBS (parallel compile jobs), CXX (default g++).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "simt")

COMMON = ["-std=c++20", "-fPIC", "-fvisibility=hidden", "-DFUSEDRNN_SIMT",
          f"-I{ROOT}/csrc/include", f"-I{ROOT}/csrc"]

# Per variant: flags of the kernels, flags of the runtime, link flags. Under
# TSan the runtime itself is not instrumented: its scheduler state is shared by
# all fibers of a block and must create no happens-before edge (runtime.cpp).
SAN_ASAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
VARIANTS = {
    "plain": dict(kernel=["-O2"], runtime=["-O2"], link=[]),
    "asan": dict(kernel=["-O1", "-g", "-fno-omit-frame-pointer"] + SAN_ASAN,
                 runtime=["-O1", "-g", "-fno-omit-frame-pointer"] + SAN_ASAN, link=SAN_ASAN),
    "tsan": dict(kernel=["-O1", "-g", "-fsanitize=thread"],
                 runtime=["-O1", "-g", "-DFUSEDRNN_SIMT_TSAN"], link=["-fsanitize=thread"]),
}


def torch_flags():
    """Compile and link flags for the sources that use ATen (as torch's own extension build)."""
    import torch

    torch_dir = os.path.dirname(torch.__file__)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cflags = [f"-I{torch_dir}/include", f"-I{torch_dir}/include/torch/csrc/api/include",
              f"-I{sysconfig.get_paths()['include']}", "-DTORCH_API_INCLUDE_EXTENSION_H",
              "-DTORCH_EXTENSION_NAME=_simt", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-O2"]
    ldflags = [f"-L{torch_dir}/lib", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    return cflags, ldflags


def sources():
    torch_sources = ([f"{ROOT}/csrc/{name}" for name in ("ops.cpp", "op_checks.cpp",
                                                          "simt/debug_ops.cpp")]
                     + sorted(glob.glob(f"{ROOT}/csrc/layer/*.cpp")))
    kernels = sorted(glob.glob(f"{ROOT}/csrc/cuda/*.cu"))
    return torch_sources, kernels, f"{ROOT}/csrc/simt/runtime.cpp"


def output_of(variant: str) -> str:
    if variant == "plain":
        return os.path.join(ROOT, "fusedrnn", "_simt" + sysconfig.get_config_var("EXT_SUFFIX"))
    return os.path.join(BUILD, variant, "_simt.so")


def ninja_file(variants) -> str:
    cxx = os.environ.get("CXX", "g++")
    cflags, ldflags = torch_flags()
    torch_sources, kernels, runtime = sources()
    lines = [f"builddir = {BUILD}", f"cxx = {cxx}", "",
             "rule cc", "  command = $cxx -MMD -MF $out.d $flags -c $in -o $out",
             "  depfile = $out.d", "  deps = gcc", "  description = CXX $out", "",
             "rule link", "  command = $cxx -shared $in -o $out $flags",
             "  description = LINK $out", ""]

    def obj(folder, src):
        name = os.path.basename(src).replace(".", "_") + ".o"
        return os.path.join(BUILD, folder, name)

    common_objs = []
    for src in torch_sources:
        o = obj("common", src)
        common_objs.append(o)
        lines += [f"build {o}: cc {src}", f"  flags = {' '.join(COMMON + cflags)}"]
    for variant in variants:
        v = VARIANTS[variant]
        objs = list(common_objs)
        for src in kernels:  # a .cu read as C++: -x c++
            o = obj(variant, src)
            objs.append(o)
            lines += [f"build {o}: cc {src}", f"  flags = -x c++ {' '.join(COMMON + v['kernel'])}"]
        o = obj(variant, runtime)
        objs.append(o)
        lines += [f"build {o}: cc {runtime}", f"  flags = {' '.join(COMMON + v['runtime'])}"]
        lines += [f"build {output_of(variant)}: link {' '.join(objs)}",
                  f"  flags = {' '.join(v['link'] + ldflags + ['-pthread'])}"]
    return "\n".join(lines) + "\n"


def ninja_binary() -> str:
    found = shutil.which("ninja", path=os.path.dirname(sys.executable) + os.pathsep +
                         os.environ.get("PATH", ""))
    if not found:
        sys.exit("csrc/simt/build.py: ninja not found (pip install ninja)")
    return found


def main(argv) -> int:
    variants = argv or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"csrc/simt/build.py: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    os.makedirs(BUILD, exist_ok=True)
    path = os.path.join(BUILD, "build.ninja")
    text = ninja_file(variants)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
    return subprocess.call([ninja_binary(), "-f", path, "-j", jobs], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
