"""moebif: bifurcations, hysteresis and collapse of adaptive softmax routers in MoE models.

The public API, re-exported by name. Heavy modules (numba kernels, torch) are imported lazily
on first use, so ``import moebif`` and ``moebif theory`` stay fast.
"""

from . import monitor as monitor
from ._version import __version__ as __version__
from .continuation import Branch as Branch
from .continuation import SpecialPoint as SpecialPoint
from .continuation import continue_equilibria as continue_equilibria
from .continuation import continue_folds as continue_folds
from .meanfield import jacobian as jacobian
from .meanfield import softmax as softmax
from .meanfield import solve_meanfield as solve_meanfield
from .meanfield import uniform_state as uniform_state
from .meanfield import vector_field as vector_field
from .metastability import escape_theory as escape_theory
from .metastability import pulse_threshold as pulse_threshold
from .monitor import LayerMonitor as LayerMonitor
from .monitor import LoadMonitor as LoadMonitor
from .monitor import fit_whittle as fit_whittle
from .nexperts import SymmetricBranch as SymmetricBranch
from .nexperts import barrier as barrier
from .nexperts import branch_curve as branch_curve
from .nexperts import collapse_threshold as collapse_threshold
from .nexperts import symmetric_equilibria as symmetric_equilibria
from .params import ParameterError as ParameterError
from .params import RouterParams as RouterParams
from .router import SimulationResult as SimulationResult
from .router import StationarySpread as StationarySpread
from .router import simulate_batch_router as simulate_batch_router
from .router import simulate_batch_router_reference as simulate_batch_router_reference
from .router import simulate_token_router as simulate_token_router
from .router import stationary_spread as stationary_spread
from .router_nexp import NExpertRun as NExpertRun
from .router_nexp import simulate_topk_router as simulate_topk_router
from .router_nexp import sweep_feedback as sweep_feedback
from .sweeps import HysteresisExtrapolation as HysteresisExtrapolation
from .sweeps import HysteresisResult as HysteresisResult
from .sweeps import extrapolate_hysteresis as extrapolate_hysteresis
from .sweeps import fit_rate_law as fit_rate_law
from .sweeps import sweep_hysteresis as sweep_hysteresis
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
from .topk import inclusion_jacobian as inclusion_jacobian
from .topk import inclusion_probabilities as inclusion_probabilities
from .topk import topk_branch as topk_branch
from .topk import topk_collapse_threshold as topk_collapse_threshold
from .topk import topk_linear_threshold as topk_linear_threshold
from .topk import topk_vector_field as topk_vector_field
