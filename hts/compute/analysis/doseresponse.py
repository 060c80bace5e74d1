"""Four-parameter logistic (4PL) dose-response fits.

The model, in log10-concentration space (GraphPad's "log(agonist) vs. response, variable
slope")::

    response = bottom + (top - bottom) / (1 + 10 ** ((log10(ec50) - log10(c)) * hill))

- ``top >= bottom`` always; the sign of ``hill`` gives the direction: positive when the
  response rises with concentration, negative when it falls (inhibition).
- Zero concentrations (vehicle controls) have no logarithm: they are left out of the fit
  (and counted in ``n_zero``). Non-finite pairs are dropped.
- The fit is bounded trust-region least squares (:func:`scipy.optimize.least_squares`,
  what ``curve_fit`` runs with bounds, with the analytic Jacobian) from
  several starting points (rising and falling, EC50 at the quartiles of the tested range),
  keeping the one with the smallest residual sum of squares. Bounds: ``log10(ec50)`` within
  two decades of the tested range, ``|hill|`` up to 10, plateaus within one response range
  beyond the observed responses.
- :func:`fit_4pl` never raises on data it cannot fit (too few concentrations, a flat or
  pure-noise response): it returns ``ok=False`` with a one-line ``reason``. A fit is
  ``ok`` when it converged, beats a flat line (extra-sum-of-squares F test, p < 0.05,
  reported as ``p_flat``) and puts the EC50 inside the tested concentration range.

>>> c = np.array([0.01, 0.1, 1, 10, 100])
>>> fit = fit_4pl(c, logistic4(c, bottom=0, top=100, ec50=1.0, hill=1.0))
>>> fit["ok"], round(fit["ec50"], 3)
(True, 1.0)
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["fit_4pl", "logistic4"]

_MAX_HILL = 10.0
_MAX_NFEV = 100  # per start: clean fits converge in ~10-25 evaluations, noise can wander for thousands


def logistic4(concentration, bottom: float, top: float, ec50: float, hill: float) -> np.ndarray:
    """The 4PL response at ``concentration`` (same unit as ``ec50``; 0 gives the low-dose plateau)."""
    c = np.asarray(concentration, dtype=float)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_c = np.log10(c)
        return _model(log_c, bottom, top, np.log10(ec50), hill)


def _model(log_c, bottom, top, log_ec50, hill):
    # Clip the exponent: 10**400 overflows, and the plateau is reached long before.
    z = np.clip((log_ec50 - log_c) * hill, -300.0, 300.0)
    return bottom + (top - bottom) / (1.0 + np.power(10.0, z))


def _jacobian(log_c, bottom, top, log_ec50, hill):
    z = np.clip((log_ec50 - log_c) * hill, -300.0, 300.0)
    s = 1.0 / (1.0 + np.power(10.0, z))
    g = -(top - bottom) * np.log(10.0) * s * (1.0 - s)  # d response / d z
    return np.column_stack([1.0 - s, s, g * hill, g * (log_ec50 - log_c)])


def _failed(reason: str, n: int, n_zero: int, **extra) -> dict:
    out = {
        "bottom": float("nan"),
        "top": float("nan"),
        "ec50": float("nan"),
        "hill": float("nan"),
        "r2": float("nan"),
        "p_flat": float("nan"),
        "n": n,
        "n_zero": n_zero,
        "ok": False,
        "reason": reason,
    }
    out.update(extra)
    return out


def _f_test_p(ss_flat: float, ss_fit: float, n: int) -> float:
    """p of the extra-sum-of-squares F test of the 4PL (4 params) against a flat line (1 param)."""
    from scipy.stats import f as f_dist

    df_fit = n - 4
    if df_fit <= 0:
        return float("nan")
    if ss_fit <= 0:
        return 0.0 if ss_flat > 0 else 1.0
    F = ((ss_flat - ss_fit) / 3.0) / (ss_fit / df_fit)
    return float(f_dist.sf(max(F, 0.0), 3, df_fit))


def fit_4pl(concentration: np.ndarray, response: np.ndarray) -> dict:
    """Fit a four-parameter logistic to a dose-response series.

    Returns a dict with ``bottom``, ``top``, ``ec50`` (in the concentration's unit),
    ``hill``, ``r2`` (of the fitted, nonzero-concentration points), ``p_flat`` (F test
    against a flat line), ``n`` (points fitted), ``n_zero`` (zero-concentration points
    left out), ``ok`` and ``reason`` (None when ok). Parameters are NaN when no curve
    could be fitted; they are filled in but ``ok`` is False when the curve is not
    trustworthy (no significant dose effect, EC50 outside the tested range).

    Raises ``ValueError`` only for inputs of different lengths or negative concentrations.
    """
    c = np.asarray(concentration, dtype=float).ravel()
    y = np.asarray(response, dtype=float).ravel()
    if c.shape != y.shape:
        raise ValueError(f"concentration ({c.size}) and response ({y.size}) differ in length")
    keep = np.isfinite(c) & np.isfinite(y)
    c, y = c[keep], y[keep]
    if (c < 0).any():
        raise ValueError("concentrations must not be negative")
    n_zero = int((c == 0).sum())
    c, y = c[c > 0], y[c > 0]
    n = int(c.size)
    x = np.log10(c)
    levels = np.unique(x)
    if levels.size < 4 or n < 5:
        return _failed(f"need at least 4 nonzero concentrations and 5 points, got {levels.size} and {n}", n, n_zero)
    y_lo, y_hi = float(y.min()), float(y.max())
    span = y_hi - y_lo
    ss_flat = float(((y - y.mean()) ** 2).sum())
    if span <= 1e-12 * max(abs(y_lo), abs(y_hi), 1.0) or ss_flat == 0.0:
        return _failed("response is flat", n, n_zero)

    x_lo, x_hi = float(levels[0]), float(levels[-1])
    lower = [y_lo - span, y_lo - span, x_lo - 2.0, -_MAX_HILL]
    upper = [y_hi + span, y_hi + span, x_hi + 2.0, _MAX_HILL]
    # Plateau guesses from the lowest and highest doses; both directions, three EC50s.
    y_low_dose = float(np.median(y[x == x_lo]))
    y_high_dose = float(np.median(y[x == x_hi]))
    bottom0, top0 = min(y_low_dose, y_high_dose), max(y_low_dose, y_high_dose)
    if top0 - bottom0 < 0.1 * span:
        bottom0, top0 = y_lo, y_hi
    starts = [(bottom0, top0, float(np.quantile(levels, q)), h) for h in (1.0, -1.0) for q in (0.5, 0.25, 0.75)]
    best = None  # (sum of squares, parameters, converged)
    for p0 in starts:
        try:
            params, converged = _least_squares(x, y, p0, lower, upper)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        ss = float(((y - _model(x, *params)) ** 2).sum())
        if np.isfinite(ss) and (best is None or ss < best[0]):
            best = (ss, params, converged)
    if best is None:
        return _failed("fit failed: no finite solution from any starting point", n, n_zero)

    ss_fit, (bottom, top, log_ec50, hill), converged = best[0], (float(v) for v in best[1]), best[2]
    if top < bottom:  # the same curve with the plateaus named the other way round
        bottom, top, hill = top, bottom, -hill
    r2 = 1.0 - ss_fit / ss_flat
    p_flat = _f_test_p(ss_flat, ss_fit, n)
    result = {
        "bottom": bottom,
        "top": top,
        "ec50": float(10.0**log_ec50),
        "hill": hill,
        "r2": float(r2),
        "p_flat": p_flat,
        "n": n,
        "n_zero": n_zero,
        "ok": True,
        "reason": None,
    }
    if abs(hill) < 1e-3 or not (np.isfinite(p_flat) and p_flat < 0.05):
        p_text = "n/a" if not np.isfinite(p_flat) else f"{p_flat:.2g}"
        result.update(ok=False, reason=f"no significant dose effect (F test against a flat line, p={p_text})")
    elif not converged:
        result.update(ok=False, reason=f"fit did not converge within {_MAX_NFEV} evaluations")
    elif not (x_lo <= log_ec50 <= x_hi):
        result.update(ok=False, reason="EC50 outside the tested concentration range")
    return result


def _least_squares(x, y, p0, lower, upper) -> tuple[np.ndarray, bool]:
    """Bounded trust-region least squares from ``p0``: (parameters, converged)."""
    from scipy.optimize import least_squares

    p0 = np.clip(np.asarray(p0, float), np.asarray(lower) + 1e-9, np.asarray(upper) - 1e-9)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = least_squares(
            lambda p: _model(x, *p) - y,
            p0,
            jac=lambda p: _jacobian(x, *p),
            bounds=(lower, upper),
            method="trf",
            x_scale="jac",
            max_nfev=_MAX_NFEV,
        )
    return res.x, bool(res.success)
