"""PNG plots of the speedup against torch.nn: ratio_vs_batch.png, ratio_vs_hidden.png.

matplotlib is optional (``pip install 'fusedrnn[bench]'``): without it the
harness still writes results.json and results.md and skips the plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from .configs import SHORT_DTYPE
from .peers import BASELINE

PLOT_FILES = ("ratio_vs_batch.png", "ratio_vs_hidden.png")
NO_MATPLOTLIB_NOTE = ("plots skipped: matplotlib is not installed "
                      "(pip install 'fusedrnn[bench]' or pip install matplotlib to get "
                      + " and ".join(PLOT_FILES) + ")")

_PANEL_ORDER = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3, "train": 0, "infer": 1}


def load_pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _series_key(row: dict, xkey: str) -> str:
    """The legend entry: peer, dtype and the sizes held fixed along the x axis."""
    c = row["config"]
    fixed = [f"T={c['T']}"]
    fixed += [f"H={c['H']}"] if xkey == "B" else [f"B={c['B']}"]
    if c["I"] != c["H"]:
        fixed.append(f"I={c['I']}")
    if c["layers"] != 1:
        fixed.append(f"L={c['layers']}")
    if c["bidirectional"]:
        fixed.append("bi")
    return f"{row['peer']} {SHORT_DTYPE[c['dtype']]} " + " ".join(fixed)


def _draw_panel(ax, points: Sequence[dict], panel: tuple, xkey: str, xlabel: str):
    from matplotlib.ticker import NullFormatter

    series: dict = {}
    for r in points:
        series.setdefault(_series_key(r, xkey), []).append((r["config"][xkey], r["ratio_vs_torch"]))
    ys, xs = [1.0], []
    annotate = sum(len(p) for p in series.values()) <= 24
    for key, p in sorted(series.items()):
        p.sort()
        (line,) = ax.plot([a for a, _ in p], [b for _, b in p], "o-", ms=5, label=key)
        if annotate:
            for a, b in p:
                ax.annotate(f"{b:.2f}x", (a, b), textcoords="offset points", xytext=(6, 4),
                            fontsize=7, color=line.get_color())
        xs += [a for a, _ in p]
        ys += [b for _, b in p]
    ax.axhline(1.0, color="k", ls="--", lw=1, label="torch.nn (= 1)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    lo, hi = min(0.5, min(ys) / 1.3), max(2.0, max(ys) * 1.3)
    ax.set_ylim(lo, hi)
    ticks = [2.0 ** k for k in range(-10, 11) if lo <= 2.0 ** k <= hi]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{t:g}x" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    if xs:
        ux = sorted(set(xs))
        ax.set_xlim(ux[0] / 1.5, ux[-1] * 1.5)
        ax.set_xticks(ux)
        ax.set_xticklabels([str(v) for v in ux])
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.text(0.5, 0.6, "no peer row passed the gate", transform=ax.transAxes,
                ha="center", color="red")
    ax.set_title(f"{panel[0].upper()} {panel[1]}" if panel[0] else "no rows")
    ax.set_xlabel(f"{xlabel} (log)")
    ax.set_ylabel("speedup vs torch.nn (log; > 1 is faster)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def write_plots(rows: Sequence[dict], out_dir, title: str = "") -> Optional[list]:
    """The speedup against B and against H (log axes), one panel per (cell,
    mode).  Returns the PNG paths, or None when matplotlib is not installed."""
    plt = load_pyplot()
    if plt is None:
        return None
    points = [r for r in rows if r["status"] == "ok" and r["peer"] != BASELINE
              and r["ratio_vs_torch"] is not None]
    panels = sorted({(r["config"]["cell"], r["config"]["mode"]) for r in rows},
                    key=lambda cm: (_PANEL_ORDER.get(cm[0], 9), _PANEL_ORDER.get(cm[1], 9)))
    files = []
    for xkey, fname, xlabel in (("B", PLOT_FILES[0], "batch size B"),
                                ("H", PLOT_FILES[1], "hidden size H")):
        n = max(1, len(panels))
        ncols = min(2, n)
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, panel in zip(axes.flat, panels or [("", "")]):
            sel = [r for r in points if (r["config"]["cell"], r["config"]["mode"]) == panel]
            _draw_panel(ax, sel, panel, xkey, xlabel)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = Path(out_dir) / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files
