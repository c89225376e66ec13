"""PNG plots of one selection (matplotlib, Agg backend: no display needed).

- ``score_hist.png``: mean-benefit distribution of the eligible pool, the quality set and the
  selection (densities on a shared axis, so the shift the selection makes is visible).
- ``clusters.png`` (clustering methods only): candidates per cluster against the number selected
  from each, clusters in their round-robin visiting order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, and the same bytes on every machine
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gdig_core.io import atomic_path  # noqa: E402
from gdig_core.selection.layout import CLUSTERS, SCORE_HIST  # noqa: E402

# No date or version in the PNG metadata, so equal inputs give equal bytes.
_PNG_META = {"Software": None}


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=_PNG_META)
    plt.close(fig)
    return path


def score_histogram(
    path: Path, pool_vals: np.ndarray, quality_vals: np.ndarray, selected_vals: np.ndarray, title: str
) -> Path:
    """Mean benefits of the eligible pool, the quality set and the selection (plain arrays)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(pool_vals):
        lo, hi = float(np.min(pool_vals)), float(np.max(pool_vals))
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 51)
        groups = [
            ("eligible pool", pool_vals),
            ("quality set", quality_vals),
            ("selected", selected_vals),
        ]
        for label, vals in groups:
            if len(vals):
                ax.hist(
                    vals,
                    bins=bins,
                    density=True,
                    histtype="step",
                    linewidth=1.5,
                    label=f"{label} ({len(vals)})",
                )
        ax.legend()
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("mean benefit over seeds (positive = lowers seed loss)")
    ax.set_ylabel("density")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def cluster_histogram(path: Path, clustering: dict[str, Any], title: str) -> Path:
    sizes = np.asarray(clustering["cluster_sizes"])
    chosen = np.asarray(clustering["selected_per_cluster"])
    x = np.arange(len(sizes))
    width = 0.8 if len(sizes) <= 60 else 1.0  # many clusters: touching bars read as a profile
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x, sizes, width=width, color="#c6dbef", label="candidates in cluster")
    ax.bar(x, chosen, width=width, color="#08519c", label="selected")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log" if sizes.max(initial=1) > 50 * max(1, chosen.max(initial=1)) else "linear")
    ax.set_xlabel(f"cluster (round-robin order, k={clustering['k_used']})")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def write_plots(
    out_dir: Path,
    pool_vals: np.ndarray,
    quality_vals: np.ndarray,
    selected_vals: np.ndarray,
    summary: dict[str, Any],
) -> dict[str, Path]:
    """Write the plots of one selection from the mean benefits of the eligible pool, the quality
    set and the selection, and its summary; returns {name: path}."""
    title = f"{summary['method']}, budget {summary['budget']}: {summary['size']} selected"
    files = {"score_hist": score_histogram(out_dir / SCORE_HIST, pool_vals, quality_vals, selected_vals, title)}
    if summary.get("clustering"):
        files["clusters"] = cluster_histogram(out_dir / CLUSTERS, summary["clustering"], title)
    return files
