"""OUTDIR/lengths.png: how long conversations are and how full the packed rows came out."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_lengths(stats: dict[str, Any], path: Path) -> Path:
    """Two histograms from stats.json (train split): conversation tokens and row tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = stats["split"]["train"]
    hist = tr["histograms"]
    width = hist["bin_tokens"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in (
        (axes[0], "conversation_tokens", f"conversations ({tr['conversations']:,})"),
        (axes[1], "row_tokens", f"packed rows ({tr['sequences']:,}, {stats['packing']})"),
    ):
        xs = [int(k) for k in hist[key]]
        ax.bar(xs, list(hist[key].values()), width=width, align="edge", color="#4c72b0")
        ax.axvline(stats["max_seq_length"], color="#c44e52", ls="--", lw=1, label="max_seq_length")
        ax.set_xlabel("tokens")
        ax.set_ylabel("count")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"padding {tr['padding_fraction']:.2%} ({stats['packing']}) vs greedy "
        f"{tr['padding_fraction_greedy']:.2%}, single {tr['padding_fraction_single']:.2%}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
