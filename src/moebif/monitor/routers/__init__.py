"""Router detection: one adapter per router family or layout (:mod:`.base`), the registry
:data:`ADAPTERS` (tried in its order on every module, in model order), and :func:`find_routes`,
which :class:`~moebif.monitor.hooks.RouterMonitor` and :func:`find_routers` use."""

from __future__ import annotations

import torch

from .base import Route as Route
from .base import RouterAdapter as RouterAdapter
from .doge import DogeAdapter as DogeAdapter
from .named import NamedRouterAdapter as NamedRouterAdapter
from .v4_block import V4BlockAdapter as V4BlockAdapter
from .v4_block import v4_gate as v4_gate

__all__ = [
    "ADAPTERS",
    "Route",
    "RouterAdapter",
    "clean_label",
    "find_routes",
    "route_for",
    "unwrap",
]

# tried in this order on each module
ADAPTERS: tuple[RouterAdapter, ...] = (DogeAdapter(), NamedRouterAdapter(), V4BlockAdapter())

# wrapper components dropped from labels (FSDP 1, activation checkpointing, torch.compile)
WRAPPERS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def clean_label(name: str) -> str:
    """A module name without the components added by wrappers (FSDP's
    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module``, ``torch.compile``'s ``_orig_mod``)."""
    return ".".join(p for p in name.split(".") if p not in WRAPPERS)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def route_for(label, module, parent, config) -> Route | None:
    """The route of ``module`` by the first adapter that hooks the module itself and matches it
    (for a module the user names)."""
    for adapter in ADAPTERS:
        if adapter.hooks_itself and (r := adapter.match(label, module, parent, config)):
            return r
    return None


def find_routes(model: torch.nn.Module) -> dict[str, Route]:
    """``{label: Route}`` of the routers of ``model`` (wrappers looked through), in model order:
    each module is offered to the adapters in turn; nothing inside a matched router is looked
    at again."""
    root = unwrap(model)
    config = getattr(root, "config", None)
    modules = list(root.named_modules())
    parents = {}
    for _, m in modules:
        for child in m.children():
            parents.setdefault(id(child), m)
    routes: dict[str, Route] = {}
    inside: tuple[str, ...] = ()
    for name, m in modules:  # in model order
        if inside and name.startswith(inside):
            continue  # never inside a router (counted already by its own output)
        label = clean_label(name)
        for adapter in ADAPTERS:
            r = adapter.match(label, m, parents.get(id(m)), config)
            if r is not None:
                routes[r.label] = r
                inside = (*inside, adapter.inside(name))
                break
    return routes
