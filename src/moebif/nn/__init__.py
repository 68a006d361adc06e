"""PyTorch MoE models of sec. 8.1-8.3 (trainable routers under a skew h and a balancing penalty).

Requires torch (and scikit-learn for the digits data); nothing else in moebif imports this
package, so ``import moebif`` stays free of torch.

- :mod:`.data`: the two-regime regression of sec. 8.1 and scikit-learn's digits (sec. 8.3);
- :mod:`.models`: :class:`SoftRouterMoE` (8.1), :class:`HardTop1MoE` with the straight-through
  estimate (8.2, 8.3), affine and bottleneck-MLP experts, all as ensembles with a model axis;
- :mod:`.train`: losses, the balancing penalty, metrics, :class:`Trainer` and the quasi-static
  scan of h.
"""

from .data import Dataset as Dataset
from .data import digits_data as digits_data
from .data import regression_data as regression_data
from .data import two_regime_target as two_regime_target
from .models import AffineExperts as AffineExperts
from .models import BottleneckExperts as BottleneckExperts
from .models import HardTop1MoE as HardTop1MoE
from .models import MoEOutput as MoEOutput
from .models import SoftRouterMoE as SoftRouterMoE
from .models import generators as generators
from .models import straight_through as straight_through
from .train import Trainer as Trainer
from .train import TrainSettings as TrainSettings
from .train import balancing_penalty as balancing_penalty
from .train import evaluate as evaluate
from .train import member_seeds as member_seeds
from .train import quasi_static_scan as quasi_static_scan
from .train import scan_legs as scan_legs
from .train import task_loss as task_loss
from .train import torch_threads as torch_threads
from .train import updown_path as updown_path
