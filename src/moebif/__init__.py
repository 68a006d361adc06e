"""moebif: bifurcations, hysteresis and collapse of adaptive softmax routers in MoE models.

The public API, re-exported by name. Heavy modules (numba kernels, torch) are imported lazily
on first use, so ``import moebif`` and ``moebif theory`` stay fast.
"""

from ._version import __version__ as __version__
from .meanfield import jacobian as jacobian
from .meanfield import softmax as softmax
from .meanfield import solve_meanfield as solve_meanfield
from .meanfield import uniform_state as uniform_state
from .meanfield import vector_field as vector_field
from .params import ParameterError as ParameterError
from .params import RouterParams as RouterParams
from .theory import CuspNormalForm as CuspNormalForm
from .theory import Equilibrium as Equilibrium
from .theory import critical_feedback as critical_feedback
from .theory import cusp_derivatives as cusp_derivatives
from .theory import cusp_fold_approximation as cusp_fold_approximation
from .theory import cusp_normal_form as cusp_normal_form
from .theory import drift as drift
from .theory import drift_dy as drift_dy
from .theory import drift_dyy as drift_dyy
from .theory import drift_dyyy as drift_dyyy
from .theory import equilibria as equilibria
from .theory import fold_curve as fold_curve
from .theory import hysteresis_halfwidth as hysteresis_halfwidth
from .theory import load as load
from .theory import potential as potential
from .theory import regime as regime
from .theory import score_gap as score_gap
from .theory import stability_ratio as stability_ratio
from .theory import uniform_state_eigenvalues as uniform_state_eigenvalues
