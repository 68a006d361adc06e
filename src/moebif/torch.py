"""Alias of :mod:`moebif.monitor.hooks`: ``from moebif.torch import RouterMonitor``."""

from .monitor.hooks import RouterIndexError as RouterIndexError
from .monitor.hooks import RouterMonitor as RouterMonitor
from .monitor.hooks import find_routers as find_routers
