"""The base of the router adapters: a :class:`Route` (how one router is counted: the module the
hooks go on, N, k, how its output is read) and :class:`RouterAdapter`, one subclass per router
family or layout, each in its own file, registered in :data:`moebif.monitor.routers.ADAPTERS`.

An adapter says whether a module is a router of its family and, if so, returns its
:class:`Route` (with ``adapter`` set to its name), so the hooks read each family's layout as the
family reports it instead of guessing. A new family: subclass :class:`RouterAdapter`, set
``name`` and ``layout`` (one line: what is hooked and how the selection is read), implement
:meth:`RouterAdapter.match`, and add it to the registry (the order of the registry is the order
in which a module is tried). tests/monitor/test_families.py checks every family moebif knows."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Route", "RouterAdapter"]


class Route:
    """How one router is counted: where the hooks go and how its output is read."""

    __slots__ = (
        "label",
        "module",
        "n",
        "k",
        "selection",
        "indices",
        "scores",
        "score_fn",
        "probabilities",
        "router_class",
        "dispatch",
        "via_dispatch",
        "error",
        "offset",
        "buf",
        "probe",
        "adapter",
        "layout",
    )

    def __init__(self, label, module, n, k, *, selection="auto", indices=None, router_class=""):
        self.label, self.module, self.n, self.k = label, module, n, k
        self.selection = selection  # one of SELECTIONS, or "v4gate", "doge"
        self.indices = indices  # user function: output -> selection tensor
        self.scores = None  # "softmax", "sigmoid", ... or None: no importance
        self.score_fn = None  # callable for other score functions
        self.probabilities = False  # the router's score output is probabilities already
        self.router_class = router_class or type(module).__name__
        self.dispatch = None  # experts module whose input holds the selection (DBRX)
        self.via_dispatch = False  # the router output had no selection: count at `dispatch`
        self.error = None  # first error seen in a hook, raised by step()
        self.offset = 0
        self.buf = None
        self.probe = None  # ForceProbe when the forces are measured
        self.adapter = ""  # the adapter that detected it ("" for a module the user named)
        self.layout = None  # its SegmentLayout in the device buffer (moebif.monitor.buffer)

    def describe(self) -> dict:
        """What the route reports about itself: the adapter that found it and how its output
        is read, N, k, the scoring, and its slice of the device buffer."""
        lay = self.layout
        return {
            "adapter": self.adapter,
            "router_class": self.router_class,
            "selection": self.selection,
            "n_experts": self.n,
            "top_k": self.k,
            "scores": self.scores,
            "probabilities": self.probabilities,
            "via_dispatch": self.via_dispatch,
            "buffer": None if lay is None else {"offset": self.offset, "size": lay.size},
        }

    def spec(self, importance: bool) -> dict:
        imp = bool(importance and self.scores is not None)
        return {
            "n_experts": self.n,
            "top_k": self.k,
            "router_class": self.router_class,
            "importance": imp,
            "probabilities": self.scores,
            "scores": imp and not self.probabilities,
        }


class RouterAdapter:
    """One router family or layout (module docstring). ``hooks_itself``: the route's module is
    the matched module (False: a child of it, as the gate Linear of a transformers-4 block)."""

    name: ClassVar[str]
    layout: ClassVar[str]
    hooks_itself: ClassVar[bool] = True

    def match(self, label: str, module, parent, config) -> Route | None:
        """The route of ``module`` (labelled ``label``; ``parent``: its parent module;
        ``config``: the model's config or None) if it is a router of this family, else None."""
        raise NotImplementedError

    def inside(self, name: str) -> str:
        """The prefix of the module names inside the matched module ``name`` that are not
        looked at again (a router's own children are counted by its output)."""
        return f"{name}."
