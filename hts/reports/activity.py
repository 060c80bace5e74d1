"""Pictures of phenotypic activity: mAP against -log10 p per treatment (hits marked), and a
heatmap of the selected features for the hits and the negative controls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm

from hts.reports._render import new_figure, to_png

__all__ = ["activity_plot", "hit_heatmap"]


def activity_plot(treatments: Sequence[Mapping], *, null_size: int, q_threshold: float, title: str = "") -> bytes:
    """PNG: one point per treatment, mAP (y) against -log10 p (x); hits (q below the threshold) in red, labelled."""
    m = np.array([t["mean_average_precision"] for t in treatments], dtype=float)
    p = np.array([t["p_value"] for t in treatments], dtype=float)
    hit = np.array([bool(t["hit"]) for t in treatments])
    x = -np.log10(p) if len(p) else p
    with new_figure(6.4, 4.8, 110) as fig:
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter(x[~hit], m[~hit], s=22, c="#888888", label="not active", zorder=2)
        ax.scatter(x[hit], m[hit], s=28, c="#d62728", label=f"hit (q < {q_threshold:g})", zorder=3)
        # label the hits; hits on the same spot (often several at the smallest p) share one label
        spots: dict[tuple[float, float], list[str]] = {}
        for i in np.flatnonzero(hit):
            t = treatments[i]
            spots.setdefault((round(float(x[i]), 2), round(float(m[i]), 3)), []).append(
                f"{t['compound']} {t['concentration']:.3g}"
            )
        for k, ((sx, sm), names) in enumerate(sorted(spots.items(), key=lambda kv: -(kv[0][0] + kv[0][1]))[:12]):
            text = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
            ax.annotate(text, (sx, sm), fontsize=7, xytext=(-4, -10 - 9 * (k % 2)), textcoords="offset points",
                        ha="right")  # fmt: skip
        floor = -np.log10(1.0 / (null_size + 1))
        ax.axvline(floor, color="#bbbbbb", lw=0.8, ls=":", zorder=1)
        ax.set_xlabel(f"-log10 p  (permutations: {null_size}; dotted: smallest p possible)")
        ax.set_ylabel("mean average precision")
        ax.set_ylim(0, 1.02)
        ax.set_title(title or f"Phenotypic activity: {int(hit.sum())} of {len(m)} treatments active")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
        fig.tight_layout()
        return to_png(fig)


def hit_heatmap(rows: Sequence[str], matrix: np.ndarray, features: Sequence[str], *, max_features: int = 40) -> bytes:
    """PNG: normalised consensus profiles (rows: hits and the negative control) over the features that move most
    (largest mean |z|, z clipped at +-10)."""
    x = np.nan_to_num(np.asarray(matrix, dtype=float))
    if x.size == 0:
        raise ValueError("nothing to draw: no hits and no control")
    clip = 10.0  # robust z beyond +-10 is drawn saturated: one wild feature must not wash out the rest
    xc = np.clip(x, -clip, clip)
    cols = np.argsort(-np.abs(xc).mean(axis=0), kind="stable")[:max_features]
    xc = xc[:, cols]
    lim = max(float(np.abs(xc).max()), 1e-9)
    with new_figure(max(6.0, 0.18 * len(cols) + 3), max(2.5, 0.28 * len(rows) + 2.2), 110) as fig:
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(xc, aspect="auto", cmap=colormaps["RdBu_r"], norm=TwoSlopeNorm(0.0, -lim, lim))
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(cols)), [features[c] for c in cols], rotation=90, fontsize=6)
        fig.colorbar(im, ax=ax, label="robust z", shrink=0.8)
        ax.set_title(
            f"Hits against the negative controls: the features that move most (z clipped at ±{clip:g})", fontsize=9
        )
        fig.tight_layout()
        return to_png(fig)
