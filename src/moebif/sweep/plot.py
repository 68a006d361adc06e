"""The standard figure of a sweep store: a phase diagram with the theory's boundaries.

Two axes: a heat map of the replica mean of one quantity (``collapsed`` gives the collapse
probability) over the two axes, cells not yet computed in grey, and the study's theory
boundaries (:meth:`~moebif.sweep.studies.Study.boundaries`: ``a = 2 gamma T``, ``a = a_SN``,
``a = a_lin``, ...) drawn as the zero lines of their residuals on a fine grid. A third axis
gives one panel per value. One axis: the replica mean against the axis, with its standard error,
the theory's value of the quantity where the study has one (``2 H(a)`` for a hysteresis width)
and the boundaries as vertical lines; the slice the cut is taken at is named in its title.

For the collapse probability (``collapsed``) the figure also shows where it crosses 1/2, with
the uncertainty of that line: on a map the contour ``p = 0.5`` of the replica mean and the
contours where the lower and upper ends of its 95% Wilson score interval over the replicas
(:func:`wilson_interval`) reach 1/2, so the measured line lies between those two with 95%
confidence cell by cell; on a cut the Wilson band and the interval of ``x`` where the band
contains 1/2.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from .experiments import get_study
from .studies import Study

__all__ = ["FORMATS", "PlotError", "plot_store", "save_figure", "wilson_interval"]

FORMATS = ("png", "svg", "pdf")  # what save_figure writes; png and svg by default

_FINE = 160  # points a float axis of the theory grid
_MAX_PANELS = 6


class PlotError(ValueError):
    """The figure cannot be drawn with these choices. ``.option`` names the one at fault."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option


def _open(store):
    import xarray as xr

    ds = xr.open_zarr(store) if not isinstance(store, xr.Dataset) else store
    if "moebif_sweep" not in ds.attrs:
        raise PlotError("STORE", "not a moebif sweep store")
    return ds


def _geometric(v: np.ndarray) -> bool:
    if v.size < 3 or np.any(v <= 0):
        return False
    r = v[1:] / v[:-1]
    return bool(np.allclose(r, r[0], rtol=1e-6) and not np.allclose(r, 1.0))


def _edges(v: np.ndarray, log: bool) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return np.array([v[0] * 0.8, v[0] * 1.25]) if log else np.array([v[0] - 0.5, v[0] + 0.5])
    w = np.log(v) if log else v
    mid = 0.5 * (w[1:] + w[:-1])
    e = np.concatenate([[2 * w[0] - mid[0]], mid, [2 * w[-1] - mid[-1]]])
    return np.exp(e) if log else e


def _fine(v: np.ndarray, log: bool) -> np.ndarray:
    if v.dtype.kind in "iub" or v.size < 2:
        return v
    lo, hi = _edges(v, log)[[0, -1]]
    return np.geomspace(lo, hi, _FINE) if log else np.linspace(lo, hi, _FINE)


# the paper's symbols, for titles and panel labels
_SYMBOLS = {
    "gamma": "γ",
    "rho": "ρ",
    "eta": "η",
    "n_experts": "N",
    "top_k": "k",
    "batch": "B",
}

_QUANTITY_LABELS = {
    "collapsed": "collapse probability",
    "max_load": "largest expert load maxᵢ ℓᵢ",
    "load_excess": "load excess (0 balanced, 1 collapsed)",
    "final_u": "final imbalance u = p₁ − p₂",
    "final_abs_u_hat": "final |û|",
    "final_abs_u": "final |û|",
    "width": "hysteresis width",
    "h_switch_up": "switching point h (upward)",
    "h_switch_down": "switching point h (downward)",
    "a_switch_up": "collapse point a (upward)",
    "a_switch_down": "recovery point a (downward)",
    "hit_time": "collapse time (ODE time)",
}


def wilson_interval(k, n, level: float = 0.95):
    """Wilson score interval of a binomial proportion, ``k`` successes of ``n`` (arrays
    broadcast; ``n = 0`` gives NaN). Returns ``(lower, upper)``."""
    from scipy.stats import norm

    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = float(norm.ppf(0.5 + level / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def _symbol(name: str) -> str:
    return _SYMBOLS.get(name, name)


def _label(name: str) -> str:
    return {
        "gamma": "forgetting rate γ",
        "T": "softmax temperature T",
        "a": "feedback a",
        "h": "skew h",
        "rho": "load feedback ρ",
        "n_experts": "experts N",
        "top_k": "experts a token k",
        "batch": "batch B",
        "eta": "step size η",
    }.get(name, name)


def _quantity_label(q: str, replicas: int | None) -> str:
    """Axis or colour-bar label of quantity ``q``; ``replicas``: how many a cell (``None``: the
    quantity is one value a cell)."""
    base = _QUANTITY_LABELS.get(q, q)
    if not replicas:
        return base
    if q == "collapsed":
        return f"{base}\n({replicas} replicas a cell)"
    return f"{base}\n(mean of {replicas} replicas)"


def _value_label(name: str, value) -> str:
    if name == "steps":
        return f"{value} steps"
    v = f"{value:g}" if isinstance(value, float) else f"{value}"
    return f"{_symbol(name)} = {v}"


def _coordinate(ds, axis: str, value):
    """The stored coordinate of ``axis`` that ``--select axis=value`` names: the nearest one of a
    numeric axis, the equal one otherwise; :class:`PlotError` naming ``--select`` if none."""
    coords = ds[axis].values
    kind = coords.dtype.kind
    if kind in "fiu":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise PlotError("--select", f"{axis}: needs a number, got {value!r}")
        return ds[axis].sel({axis: value}, method="nearest").item()
    if kind == "b":
        if not isinstance(value, bool):
            raise PlotError("--select", f"{axis}: needs true or false, got {value!r}")
        return value
    if str(value) not in [str(c) for c in coords]:
        known = ", ".join(str(c) for c in coords[:10])
        raise PlotError("--select", f"{axis}: no coordinate {value!r} (values: {known})")
    return str(value)


def plot_store(
    store,
    *,
    quantity: str | None = None,
    x: str | None = None,
    y: str | None = None,
    select: dict | None = None,
):
    """Draw the phase diagram of a store (a path or an opened ``xarray.Dataset``).

    **Arguments:**

    - ``quantity``: the variable to show (default ``collapsed`` if recorded, else the first);
      its mean over ``replica`` is drawn.
    - ``x``, ``y``: the axes of the figure (default: the first two axes of the spec; one axis
      gives a line plot). With three axes the remaining one gives one panel per value.
    - ``select``: ``{axis: value}`` for the other axes (nearest coordinate).

    **Returns:** a matplotlib Figure. Raises :class:`PlotError` naming the choice at fault.
    """
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style

    ds = _open(store)
    spec = ds.attrs["spec"]
    entry = get_study(ds.attrs["study"])
    axes = list(spec["axes"])
    qs = spec["run"]["quantities"]
    if quantity is None:
        quantity = "collapsed" if "collapsed" in qs else qs[0]
    if quantity not in qs:
        raise PlotError(
            "--quantity", f"{quantity!r} is not in the store (recorded: {', '.join(qs)})"
        )
    da = ds[quantity]
    if "expert" in da.dims:
        raise PlotError("--quantity", f"{quantity} has one value an expert; plot max_load instead")
    select = dict(select or {})
    for k in select:
        if k not in axes:
            raise PlotError("--select", f"{k!r} is not an axis (axes: {', '.join(axes)})")
    free = [a for a in axes if a not in select]
    x = x or (free[0] if free else None)
    if x is None:
        raise PlotError("--x", "every axis is selected; leave one free")
    y = y if y is not None else next((a for a in free if a != x), None)
    for opt, name in (("--x", x), ("--y", y)):
        if name is not None and name not in axes:
            raise PlotError(opt, f"{name!r} is not an axis (axes: {', '.join(axes)})")
        if name is not None and name in select:
            raise PlotError(opt, f"{name!r} is also in --select")
    if y == x:
        raise PlotError("--y", "must differ from --x")
    rest = [a for a in axes if a not in (x, y) and a not in select]
    facet = None
    if rest:
        facet = rest[0]
        if len(rest) > 1 or ds.sizes[facet] > _MAX_PANELS:
            raise PlotError(
                "--select", f"choose values of {', '.join(rest)} (e.g. --select {rest[0]}=...)"
            )
    sel = {k: _coordinate(ds, k, v) for k, v in select.items()}

    done = ds["done"].sel(sel).load()
    vals = da.sel(sel).load().where(done).astype(float)
    has_rep = "replica" in da.dims
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells not computed yet
        if has_rep:
            # NaN replicas (no switch measured, cell not computed) do not count
            m = vals.mean("replica", skipna=True)
            count = vals.count("replica")
            se = vals.std("replica", ddof=1, skipna=True) / np.sqrt(count.where(count > 1))
        else:
            m, se = vals, None
    band = None  # the collapse probability's Wilson interval, as two arrays like m
    if has_rep and quantity == "collapsed":
        lo, hi = wilson_interval(vals.sum("replica", skipna=True), count)
        band = (m.copy(data=lo), m.copy(data=hi))
    n_rep = int(ds.sizes["replica"]) if has_rep else None
    done_sel = done
    missing = int((~done_sel.values).sum())

    fixed = dict(spec["params"]) | sel
    panels = [None] if facet is None else list(ds[facet].values)
    is_prob = quantity == "collapsed"
    title = _title(ds, spec["params"], sel, entry, missing, int(done_sel.size), len(panels))
    with figure_style():
        ncol = len(panels)
        fig, axs = plt.subplots(
            1,
            ncol,
            figsize=(3.8 * ncol + (0.9 if y else 0), 3.4),
            layout="constrained",
            squeeze=False,
        )
        mesh, handles = None, {}
        for ax, pv in zip(axs[0], panels, strict=True):
            vals = dict(fixed) | ({} if facet is None else {facet: _py(pv)})

            def part(a, pv=pv):
                return a if a is None or facet is None else a.sel({facet: pv})

            mp = part(m)
            bp = None if band is None else (part(band[0]), part(band[1]))
            if y is None:
                hs = _line(
                    ax, ds, entry, quantity, x, mp, part(se), bp, vals, COLORS, THEORY, n_rep
                )
            else:
                mesh, hs = _map(ax, ds, entry, x, y, mp, bp, vals, is_prob, COLORS)
            for h in hs:  # one legend for all panels; a p = 0.5 label per panel
                handles.setdefault(h.get_label(), h)
            where = [_value_label(k, _py(v)) for k, v in sel.items()]
            if facet is not None:
                where.append(_value_label(facet, _py(pv)))
            if where:
                prefix = "cut at " if y is None else ("at " if sel else "")
                ax.set_title(prefix + ", ".join(where), fontsize=8)
        if mesh is not None:
            fig.colorbar(mesh, ax=list(axs[0]), label=_quantity_label(quantity, n_rep), pad=0.02)
        if handles:
            # below the panels: a legend inside would hide the lines it explains
            style = {"facecolor": "0.35", "labelcolor": "white"} if y is not None else {}
            fig.legend(
                handles=list(handles.values()),
                loc="outside lower center",
                ncol=2 if len(handles) > 2 and y is not None else 1,
                fontsize=6.5,
                frameon=y is not None,
                edgecolor="none",
                framealpha=1.0,
                **style,
            )
        fig.suptitle(title, fontsize=8.5)
    return fig


def _py(v):
    return v.item() if hasattr(v, "item") else v


def _title(ds, params, sel, entry: Study, missing: int, total: int, ncol: int = 1) -> str:
    """The study's name; its fixed parameters in the paper's symbols (``γ = 1, η = 0.05``),
    wrapped between items, never inside one; the cells not computed yet. The slice of a cut
    (``--select``) is named in the panel's own title."""
    spec = ds.attrs["spec"]
    shown = [
        _value_label(k, v)
        for k, v in params.items()
        if k in entry.params and k not in sel and _worth_showing(entry, k, v)
    ]
    shown.append(f"{spec['run']['replicas']} replicas a cell")
    width = int(11 * (3.8 * ncol + 0.9))
    lines, line = [], ""
    for item in shown:
        if line and len(line) + 2 + len(item) > width:
            lines.append(line + ",")
            line = item
        else:
            line = f"{line}, {item}" if line else item
    lines.append(line)
    t = "\n".join([str(ds.attrs.get("name") or ds.attrs["study"]), *lines])
    if missing:
        t += f"\n{missing} of {total} cells not computed yet (grey)"
    return t


# the model's own parameters: named in a title whenever fixed; any other (an initial state, a
# balancer's options, the collapse indicator) only where it differs from its default
_CORE = ("a", "gamma", "T", "h", "rho", "n_experts", "top_k", "batch", "eta", "steps")


def _worth_showing(entry: Study, name: str, value) -> bool:
    if value is None or value == "":
        return False
    if name in _CORE:
        return True
    default = getattr(entry.params[name], "default", None)
    return value != default


def _theory_grid(entry: Study, vals: dict, names: list[str], grids: list[np.ndarray]):
    """Residuals of every boundary on the grid (arrays of shape of the mesh), by label."""
    varying = frozenset(names)
    out: dict[str, np.ndarray] = {}
    shape = tuple(g.size for g in grids)
    for idx in np.ndindex(*shape):
        v = dict(vals)
        for n, g, i in zip(names, grids, idx, strict=True):
            v[n] = _py(g[i])
        try:
            res = entry.boundaries(v, varying)
        except (ValueError, ArithmeticError):
            continue  # outside the theory's domain (e.g. T <= 0 at an extended edge)
        for label, r in res.items():
            out.setdefault(label, np.full(shape, np.nan))[idx] = r
    return out


_STYLES = [("--", "white"), (":", "#7fdbff"), ("-.", "#ffd166")]


_HALF = "#39d98a"  # the measured p = 0.5 line and its interval


def _map(ax, ds, entry, x, y, m, band, vals, is_prob, colors):
    import matplotlib.patheffects as pe
    from matplotlib.lines import Line2D

    xv, yv = np.asarray(ds[x].values), np.asarray(ds[y].values)
    xlog, ylog = _geometric(xv), _geometric(yv)
    data = m.transpose(y, x).values.astype(float)
    import matplotlib as mpl

    cmap = mpl.colormaps["magma"].with_extremes(bad="0.78")
    kw = {"vmin": 0.0, "vmax": 1.0} if is_prob else {}
    mesh = ax.pcolormesh(
        _edges(xv, xlog),
        _edges(yv, ylog),
        np.ma.masked_invalid(data),
        cmap=cmap,
        shading="flat",
        **kw,
    )
    xf, yf = _fine(xv, xlog), _fine(yv, ylog)
    res = _theory_grid(entry, vals, [x, y], [xf, yf])
    handles = []
    for (label, r), (ls, col) in zip(res.items(), _STYLES, strict=False):
        if not (np.nanmin(r) < 0 < np.nanmax(r)):
            continue  # the boundary does not cross this plane
        cs = ax.contour(xf, yf, r.T, levels=[0.0], colors=[col], linestyles=[ls], linewidths=1.4)
        cs.set(path_effects=[pe.withStroke(linewidth=2.6, foreground="0.1")])
        handles.append(
            Line2D(
                [],
                [],
                color=col,
                ls=ls,
                lw=1.4,
                label=f"theory: {label}",
                path_effects=[pe.withStroke(linewidth=2.6, foreground="0.1")],
            )
        )
    ax.set(
        xscale="log" if xlog else "linear",
        yscale="log" if ylog else "linear",
        xlabel=_label(x),
        ylabel=_label(y),
    )
    _log_ticks(ax.xaxis, xv, xlog)
    _log_ticks(ax.yaxis, yv, ylog)
    e_x, e_y = _edges(xv, xlog), _edges(yv, ylog)
    ax.set_xlim(e_x[0], e_x[-1])
    ax.set_ylim(e_y[0], e_y[-1])
    if band is not None and min(xv.size, yv.size) >= 2:
        handles += _half_contours(ax, xv, yv, data, band, x, y)
    return mesh, handles


def _half_contours(ax, xv, yv, data, band, x, y) -> list:
    """The measured ``p = 0.5`` line (replica mean) and the lines where the lower and upper
    ends of its Wilson interval reach 0.5, on the cell centres; legend handles of those drawn."""
    import matplotlib.patheffects as pe
    from matplotlib.lines import Line2D

    lo = band[0].transpose(y, x).values.astype(float)
    hi = band[1].transpose(y, x).values.astype(float)
    stroke = [pe.withStroke(linewidth=2.8, foreground="0.1")]
    handles = []
    for arr, ls, lw, label in (
        (data, "-", 1.6, "measured p = 0.5 (replica mean)"),
        (lo, (0, (1, 1.5)), 1.1, "95% interval of the p = 0.5 line (Wilson)"),
        (hi, (0, (1, 1.5)), 1.1, None),
    ):
        if not np.isfinite(arr).any() or not (np.nanmin(arr) < 0.5 < np.nanmax(arr)):
            continue  # nothing computed yet, or the line does not cross this plane
        cs = ax.contour(xv, yv, arr, levels=[0.5], colors=[_HALF], linestyles=[ls], linewidths=lw)
        cs.set(path_effects=stroke)
        if label:
            handles.append(
                Line2D([], [], color=_HALF, ls=ls, lw=lw, label=label, path_effects=stroke)
            )
    return handles


def _crossing(xs: np.ndarray, ys: np.ndarray, level: float) -> float | None:
    """First ``x`` where ``ys`` crosses ``level`` (linear interpolation), ``None`` if none."""
    ok = np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    s = np.sign(ys - level)
    idx = np.flatnonzero(s[1:] * s[:-1] < 0)
    hit = np.flatnonzero(s == 0)
    if hit.size and (not idx.size or hit[0] <= idx[0]):
        return float(xs[hit[0]])
    if not idx.size:
        return None
    i = idx[0]
    return float(xs[i] + (level - ys[i]) * (xs[i + 1] - xs[i]) / (ys[i + 1] - ys[i]))


def _line(ax, ds, entry, quantity, x, m, se, band, vals, colors, theory_style, n_rep):
    xv = np.asarray(ds[x].values)
    log = _geometric(xv)
    yv = m.values.astype(float)
    label = f"sweep (mean of {n_rep} replicas)" if n_rep else "sweep"
    ax.plot(xv, yv, "o-", color=colors[0], ms=3.5, label=label)
    if band is not None:
        lo, hi = (b.values.astype(float) for b in band)
        ax.fill_between(
            xv, lo, hi, color=colors[0], alpha=0.22, lw=0, label="95% interval (Wilson)"
        )
        ax.axhline(0.5, color="0.6", lw=0.6, zorder=0)
        x_mid = _crossing(xv.astype(float), yv, 0.5)
        ends = [_crossing(xv.astype(float), b, 0.5) for b in (hi, lo)]
        if x_mid is not None:
            if all(e is not None for e in ends):
                e0, e1 = sorted(ends)
                ax.axvspan(e0, e1, color=_HALF, alpha=0.25, lw=0)
                text = f"p = 0.5 at {_symbol(x)} = {x_mid:.3g} [{e0:.3g}, {e1:.3g}]"
            else:
                text = f"p = 0.5 at {_symbol(x)} = {x_mid:.3g}"
            ax.plot([x_mid], [0.5], "D", color=_HALF, mec="0.1", ms=5, label=text, zorder=4)
    elif se is not None:
        s = se.values.astype(float)
        ax.fill_between(xv, yv - s, yv + s, color=colors[0], alpha=0.25, lw=0, label="± 1 s.e.")
    xf = _fine(xv, log)
    th = []
    for xi in xf:
        v = dict(vals) | {x: _py(xi)}
        try:
            th.append(entry.theory(quantity, v))
        except (ValueError, ArithmeticError):
            th.append(None)
    if any(t is not None for t in th):
        ax.plot(
            xf,
            [np.nan if t is None else t for t in th],
            **theory_style,
            label="theory (mean field)",
        )
    res = _theory_grid(entry, vals, [x], [xf])
    for (label_b, r), (ls, _) in zip(res.items(), _STYLES, strict=False):
        s = np.sign(r)
        cross = np.flatnonzero(s[1:] * s[:-1] < 0)
        for j, c in enumerate(cross):
            x0 = xf[c] - r[c] * (xf[c + 1] - xf[c]) / (r[c + 1] - r[c])
            ax.axvline(
                x0, color="0.35", ls=ls, lw=1.0, label=f"theory: {label_b}" if j == 0 else None
            )
    _log_ticks(ax.xaxis, xv, log)
    ax.set(
        xscale="log" if log else "linear",
        xlabel=_label(x),
        ylabel=_quantity_label(quantity, n_rep),
    )
    if quantity == "collapsed":
        ax.set_ylim(-0.03, 1.03)
    return ax.get_legend_handles_labels()[0]


_NICE = np.array([1.0, 2.0, 3.0, 5.0])


def _log_ticks(axis, v: np.ndarray, log: bool) -> None:
    """Plain labels (0.3, 1, 2, 5) on a log axis instead of powers of ten."""
    if not log:
        return
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = float(v.min()), float(v.max())
    decades = np.arange(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks = np.concatenate([_NICE * 10.0**d for d in decades])
    ticks = ticks[(ticks >= lo / 1.3) & (ticks <= hi * 1.3)]
    if ticks.size > 8:
        ticks = ticks[np.isin(np.round(ticks / 10.0 ** np.floor(np.log10(ticks)), 6), [1.0, 3.0])]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda t, _: f"{t:g}"))
    axis.set_minor_formatter(NullFormatter())


def save_figure(fig, stem: str | Path, *, formats=("png", "svg")) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (of :data:`FORMATS`; default PNG and
    SVG, :func:`moebif.style.save_figure`) and close the figure; returns the paths."""
    import matplotlib.pyplot as plt

    from ..style import save_figure as save

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise PlotError("--format", f"one or more of {', '.join(FORMATS)}, got {bad or '[]'}")
    out = [Path(f) for f in save(fig, stem, formats=tuple(formats))]
    plt.close(fig)
    return out
