"""What a run reports: the machine, the terminal table, results.md and results.json.

``results.json`` holds ``schema_version``, ``env`` (:func:`collect_env`),
``meta`` (the run's settings), ``definitions`` (``metrics.DEFINITIONS``) and
the ``rows`` of ``run.make_row``.  The PNG plots are in ``plots.py``.
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import os
import platform
from pathlib import Path
from typing import Optional, Sequence

import torch

from .metrics import DEFINITIONS, MEMORY_METRIC
from .peers import BASELINE, flashrnn_function

SCHEMA_VERSION = 1

# ------------------------------------------------------------ environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fusedrnn_backend() -> Optional[str]:
    try:
        return str(importlib.import_module("fusedrnn").backend())
    except Exception as e:  # noqa: BLE001  (reported as the backend)
        return f"unavailable ({type(e).__name__})"


def _fusedrnn_build() -> Optional[str]:
    try:
        return str(importlib.import_module("fusedrnn").build_info())
    except Exception:  # noqa: BLE001  (the backend line above already says what is wrong)
        return None


def _flashrnn_version() -> Optional[str]:
    if flashrnn_function() is None:
        return None
    try:
        from importlib.metadata import version
        return version("flashrnn")
    except Exception:  # noqa: BLE001  (importable without package metadata)
        return "installed"


def collect_env(device: str) -> dict:
    """The machine and software a run was measured on (results.json ``env``)."""
    env = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fusedrnn_backend": _fusedrnn_backend(),
        "fusedrnn_build": _fusedrnn_build(),
        "flashrnn": _flashrnn_version(),
        "gpu": None,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                 "matmul": torch.backends.cuda.matmul.allow_tf32},
        "memory_metric": MEMORY_METRIC[device],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001  (no cuDNN: stays None)
        pass
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                      "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count}
        env["device_name"] = p.name
    else:
        env["device_name"] = env["cpu_model"]
    return env


# ----------------------------------------------------------------- tables

COLUMNS = ("config", "peer", "precision", "median ms", "[min, max] ms", "us/step",
           "model us/step", "TFLOP/s", "peak MB", "vs torch", "max|d out|", "status / note")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(rows: Sequence[dict], repeat_config: bool = True) -> list:
    """The table's cells, one list of strings per row."""
    out, last = [], None
    for r in rows:
        t = r["time_ms"]
        label = r["label"] if (repeat_config or r["id"] != last) else ""
        last = r["id"]
        status = r["status"] if r["status"] != "ok" else ""
        note = " ".join(x for x in (status, r["note"]) if x)
        out.append([
            label, r["peer"], r.get("precision") or "-",
            _fmt(t and t["median"], ".3f"),
            "-" if t is None else f"[{t['min']:.3f}, {t['max']:.3f}]",
            _fmt(r["us_per_step"], ".1f"),
            _fmt(r.get("model_us_per_step"), ".1f"),
            _fmt(r["tflops"], ".3g"),
            _fmt(r["peak_mem_mb"], ".1f"),
            "-" if r["ratio_vs_torch"] is None else f"{r['ratio_vs_torch']:.2f}x",
            _fmt(r["max_abs_diff_vs_torch"], ".1e"),
            note,
        ])
    return out


def format_table(rows: Sequence[dict]) -> str:
    """The terminal table (a configuration's label only on its first row)."""
    body = table_rows(rows, repeat_config=False)
    cells = [list(COLUMNS)] + body
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    numeric = {3, 4, 5, 6, 7, 8, 9, 10}

    def line(c):
        return "  ".join(c[i].rjust(widths[i]) if i in numeric else c[i].ljust(widths[i])
                         for i in range(len(c))).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(c) for c in body])


def format_markdown(rows: Sequence[dict], env: dict, meta: dict) -> str:
    """results.md: the machine and settings, then the table."""
    head = [
        "# fusedrnn benchmark",
        "",
        f"- device: {env['device']} ({env['device_name']}), cores {env['cpu_count']}, "
        f"threads {env['threads']}",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"fusedrnn backend {env['fusedrnn_backend']}, flashrnn {env['flashrnn'] or 'not installed'}",
        f"- preset `{meta.get('preset')}`, reps {meta.get('reps')}, warm-up {meta.get('warmup')}; "
        f"{env['timestamp']}",
        f"- vs torch = {DEFINITIONS['ratio_vs_torch']}; peak MB = {env['memory_metric']}",
        "",
    ]
    esc = [[c.replace("|", "\\|") for c in r] for r in table_rows(rows)]
    cols = [c.replace("|", "\\|") for c in COLUMNS]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if i in (0, 1, 2, 11) else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(head + lines) + "\n"


def summarize(rows: Sequence[dict]) -> str:
    """Row counts by status, and each peer's geometric-mean speedup."""
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    parts = [f"{len(rows)} rows: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    by_peer: dict = {}
    for r in rows:
        if r["peer"] != BASELINE and r["ratio_vs_torch"]:
            by_peer.setdefault(r["peer"], []).append(r["ratio_vs_torch"])
    for peer, rs in by_peer.items():
        gm = math.exp(sum(math.log(v) for v in rs) / len(rs))
        parts.append(f"{peer}: geometric-mean speedup vs torch.nn {gm:.2f}x over {len(rs)} rows "
                     f"(min {min(rs):.2f}x, max {max(rs):.2f}x)")
    return "\n".join(parts)


# ------------------------------------------------------------------ files


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_results(out_dir, rows: Sequence[dict], env: dict, meta: dict) -> dict:
    """Write results.json and results.md into ``out_dir`` (created if
    needed); returns their paths as ``{"json": ..., "md": ...}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "env": env, "meta": meta,
           "definitions": DEFINITIONS, "rows": list(rows)}
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    with open(paths["json"], "w") as f:
        json.dump(_jsonable(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    paths["md"].write_text(format_markdown(rows, env, meta))
    return paths
