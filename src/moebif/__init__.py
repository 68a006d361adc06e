"""moebif: bifurcations, hysteresis and collapse of adaptive softmax routers in MoE models.

The public API, re-exported by name. Heavy modules (numba kernels, torch) are imported lazily
on first use, so ``import moebif`` and ``moebif theory`` stay fast.
"""

from . import monitor as monitor
from ._version import __version__ as __version__
from .model.continuation import Branch as Branch
from .model.continuation import SpecialPoint as SpecialPoint
from .model.continuation import continue_equilibria as continue_equilibria
from .model.continuation import continue_folds as continue_folds
from .model.meanfield import jacobian as jacobian
from .model.meanfield import softmax as softmax
from .model.meanfield import solve_meanfield as solve_meanfield
from .model.meanfield import uniform_state as uniform_state
from .model.meanfield import vector_field as vector_field
from .model.metastability import escape_theory as escape_theory
from .model.metastability import pulse_threshold as pulse_threshold
from .model.symmetric import SymmetricBranch as SymmetricBranch
from .model.symmetric import barrier as barrier
from .model.symmetric import branch_curve as branch_curve
from .model.symmetric import collapse_threshold as collapse_threshold
from .model.symmetric import symmetric_equilibria as symmetric_equilibria
from .model.topk import inclusion_jacobian as inclusion_jacobian
from .model.topk import inclusion_probabilities as inclusion_probabilities
from .model.topk import topk_branch as topk_branch
from .model.topk import topk_collapse_threshold as topk_collapse_threshold
from .model.topk import topk_linear_threshold as topk_linear_threshold
from .model.topk import topk_vector_field as topk_vector_field
from .model.two_expert import CuspNormalForm as CuspNormalForm
from .model.two_expert import Equilibrium as Equilibrium
from .model.two_expert import critical_feedback as critical_feedback
from .model.two_expert import cusp_derivatives as cusp_derivatives
from .model.two_expert import cusp_fold_approximation as cusp_fold_approximation
from .model.two_expert import cusp_normal_form as cusp_normal_form
from .model.two_expert import drift as drift
from .model.two_expert import drift_dy as drift_dy
from .model.two_expert import drift_dyy as drift_dyy
from .model.two_expert import drift_dyyy as drift_dyyy
from .model.two_expert import equilibria as equilibria
from .model.two_expert import fold_curve as fold_curve
from .model.two_expert import hysteresis_halfwidth as hysteresis_halfwidth
from .model.two_expert import load as load
from .model.two_expert import potential as potential
from .model.two_expert import regime as regime
from .model.two_expert import score_gap as score_gap
from .model.two_expert import stability_ratio as stability_ratio
from .model.two_expert import uniform_state_eigenvalues as uniform_state_eigenvalues
from .monitor import LayerMonitor as LayerMonitor
from .monitor import LoadMonitor as LoadMonitor
from .monitor import fit_whittle as fit_whittle
from .params import ParameterError as ParameterError
from .params import RouterParams as RouterParams
from .sim.hysteresis import HysteresisExtrapolation as HysteresisExtrapolation
from .sim.hysteresis import HysteresisResult as HysteresisResult
from .sim.hysteresis import extrapolate_hysteresis as extrapolate_hysteresis
from .sim.hysteresis import fit_rate_law as fit_rate_law
from .sim.hysteresis import sweep_hysteresis as sweep_hysteresis
from .sim.router import SimulationResult as SimulationResult
from .sim.router import StationarySpread as StationarySpread
from .sim.router import simulate_batch_router as simulate_batch_router
from .sim.router import simulate_batch_router_reference as simulate_batch_router_reference
from .sim.router import simulate_token_router as simulate_token_router
from .sim.router import stationary_spread as stationary_spread
from .sim.topk_router import NExpertRun as NExpertRun
from .sim.topk_router import simulate_topk_router as simulate_topk_router
from .sim.topk_router import sweep_feedback as sweep_feedback
