"""Collapse monitor for MoE training runs: reads per-step expert counts per layer and reports
the usual routing metrics, the model-based stability ratio ``kappa_hat = a / (N gamma T)`` with
an interval, the regime and alarms. numpy only on the hot path (see :mod:`.monitor`)."""

from .diagnosis import DiagnoseError as DiagnoseError
from .diagnosis import Diagnosis as Diagnosis
from .diagnosis import LayerDiagnosis as LayerDiagnosis
from .diagnosis import diagnose as diagnose
from .logs import LayerLog as LayerLog
from .logs import LogError as LogError
from .logs import LogWriter as LogWriter
from .logs import RouterLog as RouterLog
from .logs import read_log as read_log
from .logs import write_log as write_log
from .metrics import load_fractions as load_fractions
from .metrics import load_metrics as load_metrics
from .metrics import max_load_excess as max_load_excess
from .monitor import Alarm as Alarm
from .monitor import LayerMonitor as LayerMonitor
from .monitor import LoadMonitor as LoadMonitor
from .monitor import default_block as default_block
from .monitor import recommended_window as recommended_window
from .whittle import WhittleFit as WhittleFit
from .whittle import block_spectrum as block_spectrum
from .whittle import fit_whittle as fit_whittle
