"""Parameter studies at scale: a spec (TOML) -> cells on an executor -> a resumable Zarr store.

``moebif sweep SPEC.toml`` runs a study (a simulator of :mod:`moebif.sim` or the cell function of
an experiment) over a grid of parameters, with replicas and a seed, and writes an xarray Dataset
to a Zarr store chunk by chunk as tasks finish. See ``docs/sweeps.md``.

- :mod:`.spec`: parsing and checking specs; cells and their seeds;
- :mod:`.studies`: the registry of simulators (and :mod:`.experiments`: experiment cells);
- :mod:`.tasks`, :mod:`.executors`: one task (a store chunk) and where tasks run;
- :mod:`.store`: the store layout, creation, region writes, chunk markers;
- :mod:`.runner`: the driver; :mod:`.plot`: the phase-diagram figure.
"""

from .executors import DaskExecutor as DaskExecutor
from .executors import Executor as Executor
from .executors import ExecutorError as ExecutorError
from .executors import InProcess as InProcess
from .executors import LocalProcesses as LocalProcesses
from .experiments import get_study as get_study
from .params import REQUIRED as REQUIRED
from .params import Param as Param
from .params import Quantity as Quantity
from .runner import SweepReport as SweepReport
from .runner import run_sweep as run_sweep
from .spec import SpecError as SpecError
from .spec import SweepSpec as SweepSpec
from .spec import cell_seed as cell_seed
from .spec import load_spec as load_spec
from .spec import parse_spec as parse_spec
from .store import StoreError as StoreError
from .store import SweepStore as SweepStore
from .studies import STUDIES as STUDIES
from .studies import Study as Study
from .studies import register as register
