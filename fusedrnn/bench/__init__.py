"""Benchmark harness: fusedrnn.LSTM/GRU against torch.nn.LSTM/GRU.

    python -m fusedrnn.bench --preset quick --device cpu --out bench-out
    python -m fusedrnn.bench --out bench-out            # the "default" preset

Every peer runs on torch.nn's weights and inputs and must first pass a
correctness gate (output, final states and, in train mode, every gradient);
only then is it timed, alternating with torch.nn in the same process.
A figure is a ratio to that baseline, on the machine the report names.

One module per step of a run:

=============  ============================================================
``configs``    what is measured: Config (cell, mode, dtype, device, shape), presets
``peers``      who is measured: fusedrnn, the reference, FlashRNN (torch.nn is the baseline)
``gate``       the correctness gate: Case (weights, inputs), evaluate, gate_check
``timing``     timing and peak memory of any callables (nothing RNN-specific)
``run``        one configuration -> one row per peer: gate, then time what passed
``metrics``    the numbers of a row, defined once (time, us/step, TFLOP/s, memory, ratio, diff)
``report``     environment, terminal table, results.md, results.json
``plots``      PNG plots (optional: matplotlib, the ``bench`` extra)
``cli``        the command line (``__main__`` runs it)
=============  ============================================================

The pytest-benchmark suite in ``benchmarks/`` reuses the presets, peers, gate
and timed calls; the tests of the harness itself are in ``tests/test_bench.py``.
"""

from .cli import build_parser, configs_from_args, main, parse_args
from .configs import (CPU_SHAPES, DEFAULT_CPU_SHAPES, PRESETS, STREAMING_SHAPES, Config, Preset,
                      Shape, make_configs, parse_dtypes, preset_configs)
from .gate import Case, GateResult, check_peer, evaluate, gate_check, tolerance, tolerance_rule
from .metrics import DEFINITIONS, MEMORY_METRIC, rnn_flops
from .peers import (BASELINE, BuiltPeer, FlashRNNPeer, FusedRNNPeer, ModulePeer, Peer,
                    ReferencePeer, default_peers, flashrnn_function)
from .report import collect_env, format_markdown, format_table, summarize, write_results
from .run import Progress, describe_error, gate_and_time, make_row, make_timed_call, run_benchmark
from .timing import measure_peak_memory, time_calls

__all__ = [
    "BASELINE", "CPU_SHAPES", "DEFAULT_CPU_SHAPES", "DEFINITIONS", "MEMORY_METRIC", "PRESETS",
    "STREAMING_SHAPES", "BuiltPeer", "Case", "Config", "FlashRNNPeer", "FusedRNNPeer", "GateResult", "ModulePeer", "Peer", "Preset",
    "Progress", "ReferencePeer", "Shape", "build_parser", "check_peer", "collect_env",
    "configs_from_args", "default_peers", "describe_error", "evaluate", "flashrnn_function",
    "format_markdown", "format_table", "gate_and_time", "gate_check", "main", "make_configs",
    "make_row", "make_timed_call", "measure_peak_memory", "parse_args", "parse_dtypes",
    "preset_configs", "rnn_flops", "run_benchmark", "summarize", "time_calls", "tolerance",
    "tolerance_rule", "write_results",
]
