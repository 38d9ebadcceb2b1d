"""The wheel: built from the sdist, installed into a fresh virtual environment, used
from outside the source tree.

`python -m build --no-isolation` makes the sdist, then builds the wheel from
the unpacked sdist alone (with the CUDA kernels whenever `make build` would
build them), so a source or header missing from the sdist fails the build.
The fresh environment gets torch from this one through a `.pth` file (a second
5.5 GB torch would cost minutes): fusedrnn itself, `_C` included, must come
from the wheel, which the smoke script checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 1200
ARTIFACTS = (".so", ".o", ".d", ".pyc")


def _run(cmd, timeout, **kwargs) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT],
         BUILD_TIMEOUT_S, env=env)
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{pattern} in {folder}: {found}"
    return found[0]


def test_sdist_holds_every_source_and_header(dist):
    with tarfile.open(_one(dist, "fusedrnn-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md"}
    for folder in ("csrc", "fusedrnn"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in ARTIFACTS and "__pycache__" not in path.parts:
                wanted.add(path.relative_to(ROOT).as_posix())
    assert not wanted - names, f"missing from the sdist: {sorted(wanted - names)}"
    assert not [n for n in names if n.endswith(ARTIFACTS)], "build artifacts in the sdist"


def test_wheel_carries_the_kernels_and_pins_torch(dist):
    with zipfile.ZipFile(_one(dist, "fusedrnn-*.whl")) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert [n for n in names if n.startswith("fusedrnn/_C.") and n.endswith(".so")], names
    release = torch.__version__.split("+")[0]
    assert f"Requires-Dist: torch=={release}" in metadata.decode()


_SMOKE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    import fusedrnn
    from fusedrnn import _C

    site = Path(sys.argv[1]).resolve()
    for what, path in (("fusedrnn", fusedrnn.__file__), ("fusedrnn._C", _C.__file__)):
        assert site in Path(path).resolve().parents, f"{what} imported from {path}, not {site}"
    assert fusedrnn.backend() == "fused", fusedrnn.backend()
    torch.manual_seed(0)
    for kind in ("LSTM", "GRU"):
        ref = getattr(torch.nn, kind)(4, 5, num_layers=2, bidirectional=True)
        fused = getattr(fusedrnn, kind)(4, 5, num_layers=2, bidirectional=True)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(6, 3, 4, requires_grad=True)
        grads = []
        for module in (ref, fused):
            out, _ = module(x)
            grads.append(torch.autograd.grad(out.square().sum(), [x, *module.parameters()]))
        err = max((a - b).abs().max().item() for a, b in zip(*grads))
        assert err <= 5e-5, f"{kind}: gradients differ from torch.nn by {err:.2e}"
    print("build_info:", fusedrnn.build_info())
""")


def test_wheel_installs_and_runs_in_fresh_venv(dist, tmp_path, capsys):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], 120)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     60).strip())
    # torch and its dependencies from this environment; nothing of fusedrnn's.
    (site / "torch_from_build_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
          _one(dist, "fusedrnn-*.whl")], 300, env=env)
    script = tmp_path / "smoke.py"
    script.write_text(_SMOKE)
    out = _run([python, script, site], 300, cwd=tmp_path, env=env)
    assert "build_info: cpu:" in out, out
    with capsys.disabled():
        print(f"\nwheel in a fresh venv: {out.strip()}")
