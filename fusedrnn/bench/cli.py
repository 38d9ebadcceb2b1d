"""The command line: ``python -m fusedrnn.bench [options]`` (``--help`` lists them).

Exit status: 0 when every row is ``ok`` or ``skipped``; 1 when a row failed
the correctness gate or errored; 2 on bad arguments.  results.json and
results.md are written before anything else can go wrong (the plots come
last, and are skipped with a note when matplotlib is missing).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import plots
from .configs import CELL_MODULES, PRESETS, Shape, make_configs, parse_dtypes, unique_shapes
from .gate import tolerance_rule
from .load import busy_processes
from .metrics import DEFINITIONS
from .onnx_peers import ONNX_PEERS
from .peers import BASELINE, Peer, default_peers
from .report import collect_env, format_table, summarize, write_results
from .run import Progress, run_benchmark
from .toolkit_peers import feature_costs, toolkit_peers


def _number_parser(kind, minimum: float, what: str):
    """An argparse type: ``kind(s)``, finite and at least ``minimum``."""

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {s!r}") from None
        if not (math.isfinite(v) and v >= minimum):
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}: {s!r}")
        return v

    return parse


_positive_int = _number_parser(int, 1, "an integer")
_nonneg_int = _number_parser(int, 0, "an integer")
_nonneg_float = _number_parser(float, 0, "a number")


def _dtype_list(s: str) -> tuple:
    try:
        return parse_dtypes(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _peer_list(s: str) -> tuple:
    names = tuple(n for n in s.split(",") if n)
    unknown = [n for n in names if n not in ONNX_PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peers {unknown}: known are {list(ONNX_PEERS)}")
    return names


def _shape(s: str) -> Shape:
    parts = s.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape wants T,B,I,H (four integers), got {s!r}")
    try:
        T, B, I, H = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape wants integers, got {s!r}") from None
    if min(T, B, I, H) < 1:
        raise argparse.ArgumentTypeError(f"--shape sizes must be >= 1, got {s!r}")
    return Shape(T, B, I, H)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fusedrnn.bench",
        description="Benchmark fusedrnn.LSTM/GRU against torch.nn.LSTM/GRU (same weights, "
                    "same inputs, correctness-gated).",
        epilog="Presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
               + ". Exit status 1 when a row failed the correctness gate or errored.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--dtype", type=_dtype_list, default=None,
                   help="comma-separated: float32,bfloat16,float16,float64 "
                        "(default: the preset's; float32 on CPU)")
    p.add_argument("--cell", choices=("lstm", "gru", "rnn_tanh", "rnn_relu", "both", "all"),
                   default="both", help="both: lstm and gru; all: every cell")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both",
                   help="train = forward+backward, infer = forward under no_grad")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write results.json, results.md and PNG plots here")
    p.add_argument("--reps", type=_positive_int, default=None,
                   help="timed repetitions per row (default: the preset's)")
    p.add_argument("--warmup", type=_nonneg_int, default=None,
                   help="warm-up calls per peer before timing (default: the preset's)")
    p.add_argument("--min-sample-ms", type=_nonneg_float, default=None,
                   help="repeat a call within one sample until it takes this long "
                        "(default 5 on CPU, 2 on GPU; 0 = one call per sample)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch.set_num_threads for the run (CPU)")
    p.add_argument("--shape", type=_shape, action="append", default=None, metavar="T,B,I,H",
                   help="replace the preset's shapes (repeatable)")
    p.add_argument("--layers", type=_positive_int, default=None,
                   help="number of layers for every shape (default: the preset's, 1)")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional for every shape")
    p.add_argument("--peers", type=_peer_list, default=(), metavar="NAMES",
                   help="add CPU inference runtimes on the module's ONNX export, "
                        "comma-separated: " + ",".join(ONNX_PEERS) + " (fusedrnn[bench])")
    p.add_argument("--load", type=_nonneg_int, default=0, metavar="N",
                   help="N busy processes (one spinning loop each) for the whole run, "
                        "stopped at its end: a busy machine")
    p.add_argument("--reference", action="store_true",
                   help="add the pure-Python reference as a peer (slow)")
    p.add_argument("--no-flashrnn", action="store_true", help="leave FlashRNN out")
    p.add_argument("--allow-tf32", action="store_true",
                   help="let cuDNN/cuBLAS use TF32 for fp32 (off by default: the gate compares fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and complete the options (device, cells, modes, dtypes, reps, ...)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    preset = PRESETS[args.preset]
    args.cells = {"both": ("lstm", "gru"), "all": tuple(CELL_MODULES)}.get(args.cell,
                                                                          (args.cell,))
    args.modes = ("train", "infer") if args.mode == "both" else (args.mode,)
    args.dtypes = args.dtype or preset.dtypes(args.device)
    if args.reps is None:
        args.reps = preset.reps[args.device]
    if args.warmup is None:
        args.warmup = preset.warmup[args.device]
    if args.min_sample_ms is None:
        args.min_sample_ms = 2.0 if args.device == "cuda" else 5.0
    return args


def configs_from_args(args: argparse.Namespace) -> list:
    shapes = list(args.shape) if args.shape else list(PRESETS[args.preset].shapes(args.device))
    if args.layers is not None or args.bidirectional:
        shapes = [Shape(s.T, s.B, s.I, s.H, args.layers or s.layers,
                        args.bidirectional or s.bidirectional) for s in shapes]
    return make_configs(unique_shapes(shapes), args.device, args.dtypes, args.cells, args.modes)


class _TorchSettings:
    """Apply threads / TF32 for the run and restore them afterwards."""

    def __init__(self, threads: Optional[int], allow_tf32: bool):
        self.threads, self.allow_tf32 = threads, allow_tf32

    def __enter__(self):
        self.saved = (torch.get_num_threads(), torch.backends.cudnn.allow_tf32,
                      torch.backends.cuda.matmul.allow_tf32)
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cudnn.allow_tf32 = self.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved[0])
        torch.backends.cudnn.allow_tf32 = self.saved[1]
        torch.backends.cuda.matmul.allow_tf32 = self.saved[2]
        return False


def main(argv: Optional[Sequence[str]] = None, peers: Optional[Sequence[Peer]] = None,
         stdout=None, stderr=None) -> int:
    """Command-line entry point.  ``peers`` replaces the default peers
    (fusedrnn, and FlashRNN / the reference where they apply); torch.nn,
    the baseline, is always there.  Returns the exit status."""
    args = parse_args(argv)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    configs = configs_from_args(args)
    if args.list:
        for c in configs:
            stdout.write(f"{c.id}\n")
        stdout.write(f"{len(configs)} configurations\n")
        return 0
    if peers is None:
        peers = default_peers(args.device, reference=args.reference, flashrnn=not args.no_flashrnn)
        peers += toolkit_peers(configs, features=args.preset == "features")
        peers += [ONNX_PEERS[name]() for name in args.peers]
    names = [p.name for p in peers]
    if BASELINE in names or len(set(names)) != len(names):
        raise ValueError(f"peer names must be unique and not {BASELINE!r}: {names}")

    with _TorchSettings(args.threads, args.allow_tf32), busy_processes(args.load):
        env = collect_env(args.device)
        meta = {"preset": args.preset if not args.shape else f"{args.preset} (--shape)",
                "load": args.load, "reps": args.reps, "warmup": args.warmup,
                "min_sample_ms": args.min_sample_ms,
                "seed": args.seed, "peers": [BASELINE] + names,
                "argv": list(argv if argv is not None else sys.argv[1:]),
                "gate_rules": {d: tolerance_rule(d) for d in args.dtypes}}
        progress = Progress(len(configs), stream=stderr, enabled=not args.no_progress)
        t0 = time.perf_counter()
        rows = run_benchmark(configs, peers, reps=args.reps, warmup=args.warmup,
                             min_sample_s=args.min_sample_ms / 1e3, seed=args.seed,
                             progress=progress)
        meta["wall_s"] = round(time.perf_counter() - t0, 2)
    written = list(write_results(args.out, rows, env, meta).values()) if args.out else []

    stdout.write(f"\nfusedrnn benchmark: {env['device']} ({env['device_name']}), "
                 f"{env['threads']} threads, torch {env['torch']}, "
                 f"fusedrnn backend {env['fusedrnn_backend']}"
                 + (f", {args.load} busy processes (--load)" if args.load else "") + "\n\n")
    stdout.write(format_table(rows) + "\n\n")
    stdout.write(f"vs torch = {DEFINITIONS['ratio_vs_torch']}\n")
    stdout.write(summarize(rows) + "\n")
    for line in feature_costs(rows):
        stdout.write(line + "\n")
    plot_note = None
    if args.out and not args.no_plot:
        title = (f"fusedrnn vs torch.nn - {env['device']} ({env['device_name']}), "
                 f"preset {meta['preset']}")
        pngs = plots.write_plots(rows, args.out, title)
        if pngs is None:
            plot_note = plots.NO_MATPLOTLIB_NOTE
        else:
            written += pngs
    if written:
        stdout.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    stdout.flush()
    if plot_note:
        stderr.write(plot_note + "\n")
        stderr.flush()
    bad = [r for r in rows if r["status"] in ("failed", "error")]
    return 1 if bad else 0
