"""Dose-response plots: the points of every well and a 4PL curve per compound.

Concentrations are on a log axis. Zero-concentration wells (vehicle controls) have no
place on it: they are drawn on a short separate axis labelled "0" at the left, with a
break mark between the two. Each compound's curve is :func:`hts.compute.analysis.doseresponse.fit_4pl`;
a fit that is ``ok`` is drawn solid with its EC50 (marked on the curve) in the legend, a
fit that is not trustworthy dashed with the reason, and no curve when none could be fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps

from hts.compute.analysis.doseresponse import fit_4pl, logistic4
from hts.reports._render import new_figure, to_png

__all__ = ["dose_response_plot", "dose_series"]

DPI = 150
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def dose_series(data: Sequence[Mapping] | Mapping[str, tuple]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``compound -> (concentrations, values)`` from either input form of :func:`dose_response_plot`."""
    out: dict[str, tuple[list, list]] = {}
    if isinstance(data, Mapping):
        for compound, pair in data.items():
            conc, values = pair
            out[str(compound)] = (list(np.ravel(conc)), list(np.ravel(values)))
    else:
        for i, row in enumerate(data):
            try:
                compound = row["compound"]
                conc = row["concentration"]
                value = row["value"] if "value" in row else row["response"]
            except KeyError as exc:
                raise ValueError(
                    f"dose-response row {i} lacks {exc.args[0]!r} (needs compound, concentration, value)"
                ) from None
            cs, vs = out.setdefault(str(compound), ([], []))
            cs.append(conc)
            vs.append(value)
    series = {}
    for compound, (cs, vs) in out.items():
        c = np.asarray([np.nan if v is None else v for v in cs], dtype=float)
        v = np.asarray([np.nan if x is None else x for x in vs], dtype=float)
        if c.shape != v.shape:
            raise ValueError(f"compound {compound!r}: {c.size} concentrations but {v.size} values")
        series[compound] = (c, v)
    return series


def _short(reason: str | None) -> str:
    return (reason or "").split(" (")[0]


def dose_response_plot(
    data: Sequence[Mapping] | Mapping[str, tuple],
    *,
    unit: str = "µM",
    ylabel: str = "",
    title: str = "",
) -> bytes:
    """A PNG of dose-response points and fitted 4PL curves, one colour per compound.

    ``data`` is either rows (mappings with ``compound``, ``concentration`` and ``value``,
    e.g. one per well) or a mapping ``compound -> (concentrations, values)``.
    Concentrations are in ``unit``; zero means vehicle. Non-finite points are left out.
    """
    series = dose_series(data)
    if not series:
        raise ValueError("no dose-response data to plot")
    fits = {name: fit_4pl(c, v) for name, (c, v) in series.items()}
    pos = np.concatenate([c[np.isfinite(c) & (c > 0)] for c, _ in series.values()])
    has_zero = any(bool(((c == 0) & np.isfinite(v)).any()) for c, v in series.values())
    if pos.size:
        lo, hi = float(np.log10(pos.min())), float(np.log10(pos.max()))
    else:
        lo, hi = -1.0, 1.0
    pad = max(0.25, 0.05 * (hi - lo))
    x_range = (10 ** (lo - pad), 10 ** (hi + pad))

    n_comp = len(series)
    palette = colormaps["tab10"].colors
    legend_right = n_comp > 4  # else below the plot, in two columns
    width = 6.4 + (2.6 if legend_right else 0.0)
    height = 4.4 + (0.0 if legend_right else 0.2 * ((n_comp + 1) // 2))
    with new_figure(width, height, DPI) as fig:
        fig.set_layout_engine("constrained")
        if has_zero:
            gs = fig.add_gridspec(1, 2, width_ratios=(1, 11), wspace=0.0)
            ax0 = fig.add_subplot(gs[0])
            ax = fig.add_subplot(gs[1], sharey=ax0)
        else:
            ax0, ax = None, fig.add_subplot()
        ax.set_xscale("log")
        ax.set_xlim(*x_range)
        for i, (name, (c, v)) in enumerate(series.items()):
            color = palette[i % len(palette)]
            marker = _MARKERS[(i // len(palette)) % len(_MARKERS)]
            ok_pts = np.isfinite(c) & np.isfinite(v)
            p = ok_pts & (c > 0)
            ax.scatter(c[p], v[p], s=22, color=color, marker=marker, alpha=0.8, edgecolors="none", zorder=3)
            z = ok_pts & (c == 0)
            if ax0 is not None and z.any():
                jitter = (i - (n_comp - 1) / 2) * min(0.12, 0.6 / max(n_comp, 1))
                ax0.scatter(
                    np.full(int(z.sum()), jitter),
                    v[z],
                    s=22,
                    color=color,
                    marker=marker,
                    alpha=0.8,
                    edgecolors="none",
                    zorder=3,
                )
            fit = fits[name]
            if np.isfinite(fit["ec50"]):
                xs = np.logspace(lo - pad, hi + pad, 300)
                ys = logistic4(xs, fit["bottom"], fit["top"], fit["ec50"], fit["hill"])
                if fit["ok"]:
                    label = f"{name}: EC50 {fit['ec50']:.3g} {unit}"
                    ax.plot(xs, ys, color=color, linewidth=1.6, zorder=2)
                    mid = 0.5 * (fit["bottom"] + fit["top"])
                    ax.plot([fit["ec50"]], [mid], marker="|", markersize=10, markeredgewidth=1.6, color=color, zorder=4)
                else:
                    label = f"{name}: no reliable fit ({_short(fit['reason'])})"
                    ax.plot(xs, ys, color=color, linewidth=1.0, linestyle="--", alpha=0.7, zorder=2)
            else:
                label = f"{name}: no fit ({_short(fit['reason'])})"
            ax.plot(
                [],
                [],
                color=color,
                marker=marker,
                linewidth=1.6 if fit["ok"] else 1.0,
                linestyle="-" if fit["ok"] else "--",
                label=label,
            )

        ax.set_xlabel(f"concentration ({unit})" if unit else "concentration")
        ax.grid(True, which="major", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        if ax0 is not None:
            ax0.set_xlim(-0.5, 0.5)
            ax0.set_xticks([0], ["0"])
            ax0.spines["right"].set_visible(False)
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", which="both", left=False, labelleft=False)
            ax0.grid(True, axis="y", color="#dddddd", linewidth=0.6)
            ax0.set_axisbelow(True)
            if ylabel:
                ax0.set_ylabel(ylabel)
            # break marks on the x axis between the two parts
            kw = dict(transform=ax.transAxes, color="black", clip_on=False, linewidth=0.9)
            d = 0.012
            for dx in (-0.006, 0.006):
                ax.plot((dx - d, dx + d), (-2 * d, 2 * d), **kw)
        elif ylabel:
            ax.set_ylabel(ylabel)
        if title:
            fig.suptitle(title, fontsize=11, fontweight="bold")
        for a in (ax, ax0):
            if a is not None:
                a.spines["top"].set_visible(False)
                a.spines["right"].set_visible(False)
        if legend_right:
            fig.legend(loc="outside right upper", fontsize=8, frameon=False)
        else:
            fig.legend(loc="outside lower center", ncol=min(2, n_comp), fontsize=8, frameon=False)
        return to_png(fig)
