"""Running the benchmark: one configuration -> one row per peer.

:func:`gate_and_time` gates every peer on one configuration, then times the
torch.nn baseline and the peers that passed, alternating them; a peer that
fails the gate gets a ``failed`` row and is never timed.
:func:`run_benchmark` does that for a list of configurations.
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from .. import cost_model as model
from . import metrics
from .configs import Config
from .gate import Case, GateResult, check_peer, torch_error
from .peers import BASELINE, BuiltPeer, Peer
from .timing import measure_peak_memory, time_calls


def make_timed_call(built: BuiltPeer, case: Case, train: bool) -> Callable[[], None]:
    """The call that is timed: the forward under no_grad, or (train) the
    forward and the backward of the output.  Gradients are released at the
    end of the call, so nothing carries over to the next."""
    if not train:
        forward = built.prepare(case.x, case.hx())

        def infer_call():
            with torch.no_grad():
                forward()
        return infer_call

    x = case.x.detach().clone().requires_grad_(True)
    forward = built.prepare(x, case.hx())
    g = case.g_out
    params = list(built.params.values())

    def train_call():
        out = forward()
        out.backward(g)
        x.grad = None
        for p in params:
            p.grad = None
    return train_call


def make_row(cfg: Config, peer: str, status: str, note: str = "", *, stats=None, base_median=None,
             mem=None, gate: Optional[GateResult] = None, out_diff: Optional[float] = None,
             gate_info: Optional[dict] = None) -> dict:
    """One row of the report and of results.json (figures: ``metrics.py``).
    ``stats`` is ``time_calls``'s entry for the peer, ``base_median`` the
    baseline's median, ``mem`` bytes; ``gate_info`` stands for ``gate`` in the
    baseline's row."""
    row = {
        "id": cfg.id, "label": cfg.label, "config": cfg.to_dict(),
        "peer": peer, "status": status, "note": note,
        "time_ms": None, "samples": None, "calls_per_sample": None,
        "us_per_step": None, "flops": cfg.flops, "tflops": None,
        "peak_mem_mb": None, "ratio_vs_torch": None,
        "max_abs_diff_vs_torch": metrics.finite_or_none(out_diff) if out_diff is not None else None,
        "gate": gate.to_dict() if gate is not None else gate_info,
        **_model_fields(cfg, peer),
    }
    if stats is not None:
        median = stats["median"]
        row["time_ms"] = metrics.time_ms(stats)
        row["samples"], row["calls_per_sample"] = stats["samples"], stats["calls_per_sample"]
        row["us_per_step"] = metrics.us_per_step(median, cfg.T)
        row["tflops"] = metrics.tflops(cfg.flops, median)
        if base_median is not None:
            row["ratio_vs_torch"] = metrics.ratio_vs_torch(base_median, median)
    if mem is not None:
        row["peak_mem_mb"] = metrics.peak_mem_mb(mem)
    return row


def _fusedrnn_persistent() -> bool:
    """Whether fusedrnn's CUDA layers take the persistent path (mode "on")."""
    try:
        from fusedrnn import ops
        return ops.persistent_mode() == "on"
    except Exception:  # noqa: BLE001  (a broken build: its rows say so; the model assumes standard)
        return False


def _model_fields(cfg: Config, peer: str) -> dict:
    """The row's precision mode and the analytic model's us/step (model.py)."""
    tf32_matmul = torch.backends.cuda.matmul.allow_tf32
    persistent = peer == "fusedrnn" and cfg.device == "cuda" and _fusedrnn_persistent()
    return {"precision": model.precision_mode(peer, cfg, tf32_matmul, torch.backends.cudnn.allow_tf32),
            "model_us_per_step": model.model_us_per_step(peer, cfg, persistent, tf32_matmul)}


def describe_error(e: BaseException) -> str:
    """``"Type: first line of the message"``, for a row's note."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def _baseline_gate_info(case: Case, base_res: dict, ref_res: Optional[dict]) -> dict:
    own_err = torch_error(base_res, ref_res)
    return {"passed": True, "rule": "baseline",
            "torch_error_vs_ref": metrics.finite_or_none(own_err) if own_err is not None else None,
            "ref_dtype": str(case.ref_dtype).replace("torch.", "") if case.ref_dtype else None}


def gate_and_time(cfg: Config, peers: Sequence[Peer], *, reps: int, warmup: int,
                  min_sample_s: float = 0.0, seed: int = 0,
                  tick: Optional[Callable[[str], None]] = None) -> list:
    """Gate, then time, every peer on one configuration; one row per peer
    (the torch.nn baseline first).  A failure becomes the row's status and
    note (``failed``, ``error``); it does not stop the run."""
    train = cfg.mode == "train"
    tick = tick or (lambda s: None)
    try:
        tick("baseline")
        case = Case(cfg, seed)
        base_res = case.baseline_results(train)
        ref_res = case.reference_results(train)
    except Exception as e:  # noqa: BLE001  (reported in every row of this configuration)
        note = f"baseline failed: {describe_error(e)}"
        return [make_row(cfg, BASELINE, "error", note)] + [make_row(cfg, p.name, "error", note)
                                                           for p in peers]

    rows: dict = {}  # peers that were not timed: skipped, error, failed
    passed = {BASELINE: (case.built_baseline(), None)}
    for peer in peers:
        reason = peer.skip_reason(cfg)
        if reason:
            rows[peer.name] = make_row(cfg, peer.name, "skipped", reason)
            continue
        tick(f"gate {peer.name}")
        try:
            built, gate = check_peer(peer, case, train)
        except Exception as e:  # noqa: BLE001  (an error row; the other peers still run)
            rows[peer.name] = make_row(cfg, peer.name, "error", describe_error(e))
            continue
        if not gate.passed:  # never time a wrong kernel
            rows[peer.name] = make_row(cfg, peer.name, "failed", gate.summary(), gate=gate,
                                       out_diff=gate.output_diff)
            continue
        passed[peer.name] = (built, gate)

    try:
        calls = {n: make_timed_call(built, case, train) for n, (built, _) in passed.items()}
        stats = time_calls(calls, reps=reps, warmup=warmup, device=cfg.device,
                           min_sample_s=min_sample_s, tick=tick)
        tick("memory")
        mems = {n: measure_peak_memory(c, cfg.device) for n, c in calls.items()}
    except Exception as e:  # noqa: BLE001  (reported in the rows that were to be timed)
        note = f"timing failed: {describe_error(e)}"
        out = [make_row(cfg, BASELINE, "error", note)]
        out += [rows.get(p.name) or make_row(cfg, p.name, "error", note) for p in peers]
        return out

    base_median = stats[BASELINE]["median"]
    out = [make_row(cfg, BASELINE, "ok", "baseline", stats=stats[BASELINE], base_median=base_median,
                    mem=mems[BASELINE], out_diff=0.0,
                    gate_info=_baseline_gate_info(case, base_res, ref_res))]
    for peer in peers:
        if peer.name in rows:
            out.append(rows[peer.name])
            continue
        built, gate = passed[peer.name]
        out.append(make_row(cfg, peer.name, "ok", built.note, stats=stats[peer.name],
                            base_median=base_median, mem=mems[peer.name], gate=gate,
                            out_diff=gate.output_diff))
    del case, calls, passed
    if cfg.device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
    return out


def run_benchmark(configs: Sequence[Config], peers: Sequence[Peer], *, reps: int, warmup: int,
                  min_sample_s: float = 0.0, seed: int = 0,
                  progress: Optional["Progress"] = None) -> list:
    """:func:`gate_and_time` on every configuration: all the rows, in order."""
    rows = []
    for i, cfg in enumerate(configs):
        if progress:
            progress.start(i, cfg.label)
        rows += gate_and_time(cfg, peers, reps=reps, warmup=warmup, min_sample_s=min_sample_s,
                              seed=seed, tick=progress.stage if progress else None)
    if progress:
        progress.i = len(configs)
        progress.finish()
    return rows


class Progress:
    """A progress bar on stderr (redrawn in place on a terminal, one line per
    configuration otherwise)."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.i, self.label, self._last = 0, "", 0.0

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def start(self, i: int, label: str):
        self.i, self.label = i, label
        if not self.enabled:
            return
        if self.tty:
            self.stage("")
        else:
            self.stream.write(f"[{i + 1}/{self.total}] {self._elapsed()} {label}\n")
            self.stream.flush()

    def stage(self, text: str):
        if not self.tty:
            return
        now = time.perf_counter()
        if text and now - self._last < 0.1:
            return
        self._last = now
        width = 24
        filled = int(width * self.i / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        done = self.i
        eta = ""
        if done:
            rem = (now - self.t0) / done * (self.total - done)
            eta = f" eta {int(rem) // 60:02d}:{int(rem) % 60:02d}"
        line = f"[{bar}] {done}/{self.total} {self._elapsed()}{eta} | {self.label} | {text}"
        cols = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + line[: cols - 1].ljust(cols - 1))
        self.stream.flush()

    def finish(self):
        if not self.enabled:
            return
        msg = f"{self.total}/{self.total} configurations in {self._elapsed()}"
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + f"[{'#' * 24}] {msg}"[: cols - 1].ljust(cols - 1) + "\n")
        else:
            self.stream.write(f"done: {msg}\n")
        self.stream.flush()
