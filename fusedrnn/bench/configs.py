"""What the benchmark measures: configurations and the named presets.

A :class:`Config` is one (cell, mode, dtype, device, shape); every peer gives
one row for it.  A :class:`Preset` is a named grid of shapes and dtypes; the
shapes come from the project's notes (docs/design.md, Benchmarks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import torch

from .metrics import rnn_flops

# ----------------------------------------------------------------- dtypes

DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
}
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def parse_dtypes(text: str) -> tuple:
    """``"bf16,fp32,bf16"`` -> ``("bfloat16", "float32")``: canonical names,
    first occurrence kept.  Raises ValueError on an unknown name."""
    out = []
    for part in text.split(","):
        key = part.strip().lower()
        if key not in DTYPE_ALIASES:
            raise ValueError(f"unknown dtype {part!r} "
                             "(choose from float32, bfloat16, float16, float64)")
        if DTYPE_ALIASES[key] not in out:
            out.append(DTYPE_ALIASES[key])
    return tuple(out)


# ------------------------------------------------------ shapes and configs


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False


# The cells the harness runs: the module class of each (in torch.nn, fusedrnn and any
# drop-in with their constructor) and its keywords.
CELL_MODULES = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
                "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
                "rnn_relu": ("RNN", {"nonlinearity": "relu"})}


def module_class(classes, cell: str):
    """``(class, keywords)`` of ``cell``: the class looked up by name in ``classes`` (a
    module such as torch.nn, or a dict; None where it has none)."""
    name, kwargs = CELL_MODULES[cell]
    found = classes.get(name) if isinstance(classes, dict) else getattr(classes, name, None)
    return found, kwargs


@dataclass(frozen=True)
class Config:
    """One benchmark configuration; each peer gives one row for it."""

    cell: str  # a key of CELL_MODULES: "lstm" | "gru" | "rnn_tanh" | "rnn_relu"
    mode: str  # "train" (forward + backward) | "infer" (forward under no_grad)
    dtype: str  # canonical name, e.g. "float32"
    device: str  # "cpu" | "cuda"
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidirectional: bool = False

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def flops(self) -> int:
        return rnn_flops(self.cell, self.T, self.B, self.I, self.H, self.layers,
                         self.bidirectional, self.mode)

    @property
    def id(self) -> str:
        s = f"{self.cell}-{self.mode}-{SHORT_DTYPE[self.dtype]}-T{self.T}-B{self.B}-I{self.I}-H{self.H}"
        if self.layers != 1:
            s += f"-L{self.layers}"
        if self.bidirectional:
            s += "-bi"
        return s

    @property
    def label(self) -> str:
        s = (f"{self.cell} {self.mode} {SHORT_DTYPE[self.dtype]} "
             f"T={self.T} B={self.B} I={self.I} H={self.H}")
        if self.layers != 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bi"
        return s

    def to_dict(self) -> dict:
        return asdict(self)


def unique_shapes(shapes: Iterable[Shape]) -> tuple:
    """``shapes`` without repeats, in first-seen order."""
    return tuple(dict.fromkeys(shapes))


def make_configs(shapes: Sequence[Shape], device: str, dtypes: Sequence[str],
                 cells: Sequence[str] = ("lstm", "gru"),
                 modes: Sequence[str] = ("train", "infer")) -> list:
    return [Config(cell, mode, dtype, device, s.T, s.B, s.I, s.H, s.layers, s.bidirectional)
            for s in shapes for cell in cells for mode in modes for dtype in dtypes]


# ---------------------------------------------------------------- presets

# The default CPU shapes, then the small batches of streaming inference.
DEFAULT_CPU_SHAPES = (Shape(100, 64, 256, 256), Shape(100, 16, 512, 512), Shape(200, 1, 128, 128))
SMALL_BATCH_SHAPES = (Shape(100, 4, 64, 128), Shape(32, 8, 64, 64))
SINGLE_STEP_SHAPE = Shape(1, 1, 128, 128)  # one time step per call, as a streaming decoder makes
WORD_LM_SHAPE = Shape(35, 20, 200, 200)  # the small word-level language model (35 steps, batch 20)
CPU_SHAPES = DEFAULT_CPU_SHAPES + SMALL_BATCH_SHAPES + (WORD_LM_SHAPE,)
STREAMING_SHAPES = (Shape(200, 1, 128, 128),) + SMALL_BATCH_SHAPES + (SINGLE_STEP_SHAPE,)
FEATURES_SHAPE = Shape(50, 16, 128, 128)  # a small training batch: each feature's cost per step

FASTRNNS_SHAPE = Shape(100, 64, 512, 512)
LATENCY_SHAPE = Shape(100, 1, 512, 512)  # small-batch latency row (GPU default)
FLASHRNN_SHAPES = unique_shapes(
    [Shape(1024, 16, 768, 768)]
    + [Shape(1024, b, 768, 768) for b in (2, 4, 8, 16, 32, 64, 128, 256)]
    + [Shape(t, 16, 768, 768) for t in (256, 512, 1024, 2048)]
)
CUDNN_SHAPES = tuple(Shape(100, b, h, h)
                     for h in (64, 128, 256, 512, 1024, 2048)
                     for b in (1, 4, 16, 64, 128))
# The CUDA kernels' acceptance grid (fp32 and bf16) and the persistent
# kernels' inference grid (T=1024).
CUDA_GRID_SHAPES = tuple(Shape(512, b, h, h) for h in (256, 512, 1024) for b in (1, 16, 64, 256))
PERSISTENT_SHAPES = tuple(Shape(1024, b, h, h)
                          for h in (256, 512, 768, 1024) for b in (1, 4, 16, 64))
GPU_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    cpu_shapes: tuple
    gpu_shapes: Optional[tuple] = None  # None: same as cpu_shapes
    cpu_dtypes: tuple = ("float32",)
    gpu_dtypes: tuple = GPU_DTYPES
    reps: dict = field(default_factory=lambda: {"cpu": 10, "cuda": 20})
    warmup: dict = field(default_factory=lambda: {"cpu": 2, "cuda": 5})

    def shapes(self, device: str) -> tuple:
        if device == "cuda" and self.gpu_shapes is not None:
            return self.gpu_shapes
        return self.cpu_shapes

    def dtypes(self, device: str) -> tuple:
        return self.gpu_dtypes if device == "cuda" else self.cpu_dtypes


PRESETS = {
    "quick": Preset(
        "quick", "a few small rows (under a minute on a 2-core CPU)",
        cpu_shapes=(Shape(32, 8, 64, 64), Shape(100, 4, 64, 128)),
        gpu_dtypes=("float32",),
        reps={"cpu": 7, "cuda": 10}, warmup={"cpu": 2, "cuda": 3},
    ),
    "default": Preset(
        "default",
        "CPU: the three default CPU shapes of docs/design.md, Benchmarks; "
        "GPU: fastrnns default + small-batch latency row",
        cpu_shapes=DEFAULT_CPU_SHAPES, gpu_shapes=(FASTRNNS_SHAPE, LATENCY_SHAPE),
    ),
    "cpu": Preset("cpu", "the default's three CPU shapes, the B=4 and B=8 streaming rows, "
                         "and the word-level LM shape T=35 B=20 I=H=200",
                  cpu_shapes=CPU_SHAPES),
    "streaming": Preset("streaming", "small batches (B <= 8) and single-step calls "
                                     "(T=1, B=1, I=H=128): streaming inference",
                        cpu_shapes=STREAMING_SHAPES),
    "features": Preset("features", "the cost of each toolkit feature (fusedrnn with it vs "
                                   "without, same run): T=50 B=16 I=H=128",
                       cpu_shapes=(FEATURES_SHAPE,), reps={"cpu": 7, "cuda": 10},
                       warmup={"cpu": 1, "cuda": 3}),
    "fastrnns": Preset("fastrnns", "fastrnns default: T=100 B=64 I=H=512, 1 and 4 layers",
                       cpu_shapes=(FASTRNNS_SHAPE, Shape(100, 64, 512, 512, layers=4))),
    "cuda": Preset("cuda", "CUDA grid: T=512, B in 1..256, I=H in 256..1024 (fp32, bf16)",
                   cpu_shapes=CUDA_GRID_SHAPES, gpu_dtypes=("float32", "bfloat16")),
    "persistent": Preset("persistent", "persistent grid: T=1024, B in 1..64, I=H in 256..1024",
                         cpu_shapes=PERSISTENT_SHAPES),
    "flashrnn": Preset("flashrnn", "FlashRNN grid: H=768; B in 2..256 at T=1024; T in 256..2048 at B=16",
                       cpu_shapes=FLASHRNN_SHAPES),
    "cudnn": Preset("cudnn", "cuDNN boundary grid: T=100, I=H in 64..2048, B in 1..128",
                    cpu_shapes=CUDNN_SHAPES),
}


def preset_configs(preset: str, device: str, dtypes: Optional[Sequence[str]] = None,
                   cells: Sequence[str] = ("lstm", "gru"),
                   modes: Sequence[str] = ("train", "infer")) -> list:
    p = PRESETS[preset]
    return make_configs(p.shapes(device), device, dtypes or p.dtypes(device), cells, modes)
