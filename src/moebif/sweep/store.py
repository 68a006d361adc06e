"""The result store: an xarray Dataset in a Zarr store (format 2, consolidated metadata).

Layout of ``STORE`` (``xarray.open_zarr(STORE)``):

- coordinates: one per axis (named after the parameter, in the spec's order), ``replica``
  (``0 .. replicas-1``) when a quantity has one value a replica, ``expert`` (``0 .. N_max-1``)
  when a quantity has one value an expert;
- data variables: one per recorded quantity, dims ``(*axes, [replica], [expert])``; float
  variables are NaN until their cell is computed (and beyond N in the padded ``expert`` dim);
  ``cell_seed`` ``(*axes)``, uint64: the seed each cell ran with; ``done`` ``(*axes)``, bool: the
  chunk marker, set after the chunk's data are written;
- attributes: ``moebif_sweep`` (layout version), ``study``, ``name``, ``spec`` (the canonical
  spec: study, every parameter with defaults resolved, axis values, run settings), ``spec_toml``
  (the source), ``fingerprint``, ``versions`` (moebif, numpy, numba, python, xarray, zarr, dask,
  distributed at creation), ``chunks`` (cells a task along each axis), ``cells``, ``tasks``,
  ``seed_rule``, ``cell_order``, ``created``.

The store is created whole, under a temporary name renamed into place (a killed creation leaves
nothing). Each finished task writes its region of every variable (zarr chunks aligned with the
task's block, each chunk file written atomically), then its ``done`` region: a killed sweep
loses only the chunks in flight, and a resumed one recomputes the chunks whose ``done`` is
false.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .spec import SweepSpec

__all__ = ["LAYOUT_VERSION", "StoreError", "SweepStore"]

LAYOUT_VERSION = 1
SEED_RULE = "cell i: numpy.random.SeedSequence(seed).spawn(cells)[i].generate_state(1, uint64)"
CELL_ORDER = "C order over the axes as listed (last axis fastest)"


class StoreError(ValueError):
    """The store cannot be created, or does not match the spec it is resumed with."""


def _all_versions() -> dict:
    import dask
    import distributed
    import xarray
    import zarr

    from .tasks import versions

    return versions() | {
        "python": platform.python_version(),
        "xarray": xarray.__version__,
        "zarr": zarr.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


class SweepStore:
    """An open store: its chunking, the done mask, and region writes of task results."""

    def __init__(self, path: Path, group, attrs: dict):
        self.path = path
        self._group = group
        self.attrs = attrs
        self.chunks = tuple(attrs["chunks"].values())
        self.axes = tuple(attrs["chunks"])

    # ------------------------------------------------------------------------------------------
    # creation and opening

    @classmethod
    def create(cls, path: str | Path, spec: SweepSpec, chunks: tuple[int, ...]) -> SweepStore:
        """Create an empty store for ``spec`` with tasks of ``chunks`` cells along each axis."""
        import dask.array as da
        import xarray as xr

        path = Path(path)
        if path.exists():
            raise StoreError(f"{str(path)!r} already exists")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise StoreError(f"folder {str(parent)!r} does not exist")
        entry = spec.entry
        axes = list(spec.axes)
        width = spec.expert_width()
        coords = {k: v for k, v in spec.axes.items()}
        qdims = {q: entry.quantities[q].dims for q in spec.quantities}
        if any("replica" in d for d in qdims.values()):
            coords["replica"] = np.arange(spec.replicas)
        if width:
            coords["expert"] = np.arange(width)
        sizes = {"replica": spec.replicas, "expert": width}
        data = {}
        encoding = {}
        for q in spec.quantities:
            qd = entry.quantities[q]
            dims = (*axes, *qd.dims)
            shape = spec.shape + tuple(sizes[d] for d in qd.dims)
            ch = chunks + tuple(sizes[d] for d in qd.dims)
            fill = False if qd.dtype == "bool" else np.nan
            arr = da.full(shape, fill, dtype=qd.dtype, chunks=ch)
            data[q] = xr.Variable(dims, arr, attrs={"description": qd.doc})
            encoding[q] = {"chunks": ch}
            if qd.dtype != "bool":
                encoding[q]["_FillValue"] = np.nan
        data["cell_seed"] = xr.Variable(
            axes,
            da.zeros(spec.shape, dtype=np.uint64, chunks=chunks),
            attrs={"description": SEED_RULE},
        )
        data["done"] = xr.Variable(
            axes,
            da.zeros(spec.shape, dtype=bool, chunks=chunks),
            attrs={"description": "chunk marker: the cell's chunk is written (set last)"},
        )
        encoding["cell_seed"] = {"chunks": chunks}
        encoding["done"] = {"chunks": chunks}
        n_tasks = int(np.prod([-(-n // c) for n, c in zip(spec.shape, chunks, strict=True)]))
        attrs = {
            "moebif_sweep": LAYOUT_VERSION,
            "study": spec.study,
            "name": spec.name,
            "spec": spec.canonical(),
            "spec_toml": spec.text or "",
            "fingerprint": spec.fingerprint(),
            "versions": _all_versions(),
            "chunks": dict(zip(axes, (int(c) for c in chunks), strict=True)),
            "cells": spec.n_cells,
            "tasks": n_tasks,
            "seed_rule": SEED_RULE,
            "cell_order": CELL_ORDER,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        ds = xr.Dataset(data, coords=coords, attrs=attrs)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".partial"))
        try:
            ds.to_zarr(
                tmp, mode="w", compute=False, zarr_format=2, consolidated=True, encoding=encoding
            )
            os.chmod(tmp, 0o777 & ~_umask())
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> SweepStore:
        """Open an existing store for writing (raises :class:`StoreError` if it is not one)."""
        import zarr

        path = Path(path)
        try:
            group = zarr.open_group(path, mode="r+", zarr_format=2)
        except Exception as e:  # zarr raises several kinds for a missing or foreign folder
            raise StoreError(f"{str(path)!r} is not a moebif sweep store ({e})") from None
        attrs = dict(group.attrs)
        if attrs.get("moebif_sweep") != LAYOUT_VERSION or "chunks" not in attrs:
            raise StoreError(f"{str(path)!r} is not a moebif sweep store (layout 1)")
        return cls(path, group, attrs)

    def check_spec(self, spec: SweepSpec) -> None:
        """Raise :class:`StoreError` naming the first spec entry that differs from the store's."""
        if self.attrs["fingerprint"] == spec.fingerprint():
            return
        old, new = self.attrs["spec"], json.loads(json.dumps(spec.canonical()))
        for table in ("study", "params", "axes", "run"):
            a, b = old.get(table, {}), new.get(table, {})
            for key in sorted(set(a) | set(b)):
                if key != "name" and a.get(key) != b.get(key):
                    raise StoreError(
                        f"the store was written by a different spec: {table}.{key} differs "
                        f"(store: {_short(a.get(key))}, spec: {_short(b.get(key))})"
                    )
        raise StoreError("the store was written by a different spec")

    # ------------------------------------------------------------------------------------------
    # chunks

    def done_mask(self) -> np.ndarray:
        return np.asarray(self._group["done"][...], dtype=bool)

    def blocks(self) -> list[tuple[tuple[int, int], ...]]:
        """Every task's block, in C order over the chunk grid (its position is the task index)."""
        shape = tuple(int(n) for n in self._group["done"].shape)
        ranges = [
            [(s, min(s + c, n)) for s in range(0, n, c)]
            for n, c in zip(shape, self.chunks, strict=True)
        ]
        out = [()]
        for r in ranges:
            out = [b + (x,) for b in out for x in r]
        return out

    def pending(self) -> list[int]:
        """Indices of the tasks whose chunk is not marked done."""
        done = self.done_mask()
        return [
            i
            for i, blk in enumerate(self.blocks())
            if not done[tuple(slice(a, b) for a, b in blk)].all()
        ]

    def write(self, result) -> None:
        """Write one task's region of every variable, then its chunk marker."""
        region = tuple(slice(a, b) for a, b in result.block)
        for q, arr in result.arrays.items():
            self._group[q][region] = arr
        self._group["cell_seed"][region] = result.seeds
        self._group["done"][region] = np.ones(result.seeds.shape, dtype=bool)


def _short(x) -> str:
    s = json.dumps(x)
    return s if len(s) <= 60 else s[:57] + "..."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
