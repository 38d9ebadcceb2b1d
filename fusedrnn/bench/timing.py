"""Timing and peak memory of any no-argument callables.

Nothing here knows about RNNs: :func:`time_calls` takes named callables and
returns per-call statistics in seconds; :func:`measure_peak_memory` returns
the bytes one call adds at its peak (``metrics.MEMORY_METRIC``).

How a call is timed, so that a noisy machine hits every peer alike:
* warm-up calls, then one calibration call per callable, which sets how many
  back-to-back calls fill one sample (``min_sample_s``; at most 1000);
* ``reps`` repetitions in which every callable gives one sample, in an order
  that rotates each repetition; a sample is its calls' time divided by their
  number; the garbage collector is off meanwhile;
* GPU: CUDA events around the calls, with synchronisation; CPU:
  ``time.perf_counter``.
"""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import threading
import time
from typing import Callable, Optional

import torch


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _seconds_for(fn: Callable, n: int, device: str) -> float:
    """Seconds for ``n`` back-to-back calls of ``fn``."""
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def time_calls(calls: dict, *, reps: int, warmup: int, device: str, min_sample_s: float = 0.0,
               tick: Optional[Callable[[str], None]] = None) -> dict:
    """Time the callables of ``calls`` (name -> no-argument callable) against
    each other.  Returns, per name, ``{"median", "min", "max"}`` seconds per
    call, ``"samples"`` and ``"calls_per_sample"``."""
    names = list(calls)
    for w in range(warmup):
        for n in names:
            if tick:
                tick(f"warm-up {w + 1}/{warmup} {n}")
            calls[n]()
    synchronize(device)
    per_sample = {}
    for n in names:  # calibration (also one more warm-up call)
        t = _seconds_for(calls[n], 1, device)
        fill = math.ceil(min_sample_s / max(t, 1e-9))
        per_sample[n] = 1 if min_sample_s <= 0 else max(1, min(1000, fill))
    samples = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.collect(0)  # (a full collection costs ~0.1 s with torch loaded; gc is off while timing)
    gc.disable()
    try:
        for r in range(reps):
            if tick:
                tick(f"timing {r + 1}/{reps}")
            k = r % len(names)
            for n in names[k:] + names[:k]:
                samples[n].append(_seconds_for(calls[n], per_sample[n], device) / per_sample[n])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: {"median": statistics.median(s), "min": min(s), "max": max(s),
                "samples": len(s), "calls_per_sample": per_sample[n]} for n, s in samples.items()}


# ----------------------------------------------------------------- memory

_LIBC = None


def _malloc_trim():
    """Give freed heap pages back to the OS, so the resident set starts low."""
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure is just less tight
        pass


def _proc_status_kb(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> Optional[int]:
    kb = _proc_status_kb("VmRSS")
    return None if kb is None else kb * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sampled_peak_rss(fn: Callable, before: int) -> int:
    """Without clear_refs: sample the resident set from a thread while ``fn`` runs."""
    peak, done = [before], threading.Event()

    def sampler():
        while not done.is_set():
            r = _rss_bytes()
            if r is not None and r > peak[0]:
                peak[0] = r
            time.sleep(0.0005)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        fn()
    finally:
        done.set()
        th.join()
    return peak[0]


def measure_peak_memory(fn: Callable, device: str) -> Optional[int]:
    """Bytes one call of ``fn`` adds at its peak (``metrics.MEMORY_METRIC``);
    None where the platform cannot tell."""
    gc.collect(0)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - before)
    _malloc_trim()
    before = _rss_bytes()
    if before is None:
        return None
    if not _reset_peak_rss():
        return max(0, _sampled_peak_rss(fn, before) - before)
    fn()
    hwm = _proc_status_kb("VmHWM")
    return None if hwm is None else max(0, hwm * 1024 - before)
