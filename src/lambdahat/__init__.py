"""lambdahat: the local learning coefficient (LLC) of PyTorch models, verified against exact answers.

    import lambdahat as lh
    result = lh.estimate_llc(model, (x, y), lh.losses.gaussian_nll)   # settings adapted on the run
    print(result)                                                        # λ̂ ± MCSE and CERTIFIED or why not

Lau, Furman, Wang, Murfet, Wei, "The Local Learning Coefficient: A Singularity-Aware Complexity
Measure", arXiv 2308.12108.
"""

from . import diagnostics, health, losses, observables, plot, report, restrictions, samplers, tasks, truth
from .calibrate import CalibrationResult, calibrate
from .estimate import LLCResult, estimate_llc, llc_from_trace
from .observables import bif
from .restrictions import component, components, head_mask
from .samplers import SamplerConfig
from .settings import Settings
from .report import write_report
from .trace import Trace
from .stages import detect_stages
from .susceptibility import SusceptibilityResult, susceptibilities
from .trajectory import TrajectoryResult, trajectory  # the function shadows the module name, as intended

__all__ = [
    "estimate_llc",
    "bif",
    "susceptibilities",
    "SusceptibilityResult",
    "component",
    "components",
    "head_mask",
    "restrictions",
    "observables",
    "calibrate",
    "CalibrationResult",
    "write_report",
    "health",
    "report",
    "llc_from_trace",
    "LLCResult",
    "SamplerConfig",
    "Settings",
    "Trace",
    "diagnostics",
    "losses",
    "plot",
    "samplers",
    "tasks",
    "truth",
    "trajectory",
    "TrajectoryResult",
    "detect_stages",
]
__version__ = "0.1.0"
