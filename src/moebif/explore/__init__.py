"""``moebif explore``: an interactive web explorer of the router's bifurcations.

A Starlette app (:mod:`.server`) serves a page that draws with plotly.js (from the installed
``plotly`` package) and asks the server for every number; the server computes the views from the
library (:mod:`.views`), runs stochastic trajectories in a worker thread (:mod:`.jobs`), reads
monitor logs through one adapter (:mod:`.logs`) and applies balancers from a registry
(:mod:`.balancers`). Needs the ``explore`` extra: ``pip install 'moebif[explore]'``.
"""

from .balancers import BALANCERS as BALANCERS
from .balancers import Balancer as Balancer
from .balancers import get_balancer as get_balancer
from .balancers import register as register
from .logs import MonitorLog as MonitorLog
from .logs import read_monitor_log as read_monitor_log
from .views import Point as Point
from .views import branch_diagram as branch_diagram


def create_app(**options):
    """The explorer's Starlette app (see :func:`moebif.explore.server.create_app`)."""
    from .server import create_app as _create

    return _create(**options)


def serve(**options) -> None:
    """Serve the explorer on the loopback (see :func:`moebif.explore.server.serve`)."""
    from .server import serve as _serve

    _serve(**options)
