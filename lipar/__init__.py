"""LIPAR: Latent Inter-Frame Pruning with Attention Recovery for Self-Forcing (Wan2.1).

Host-independent library: no ComfyUI imports. See README.md.
"""

from .config import TINY, WAN_1_3B, WanConfig, infer_config, preset
from .errors import LiparError
from .model import WanDiT, build_model
from .plan import PlanConfig, PruningPlan, build_plan, empty_plan
from .recovery import RECOVERY_FORMS, RECOVERY_MODES
from .restore import restore_latent
from .sampler import PassInfo, SampleResult, SamplerConfig, sample

__version__ = "0.1.0"

__all__ = [
    "TINY", "WAN_1_3B", "WanConfig", "infer_config", "preset", "LiparError", "WanDiT", "build_model",
    "PlanConfig", "PruningPlan", "build_plan", "empty_plan", "RECOVERY_FORMS", "RECOVERY_MODES",
    "restore_latent", "PassInfo", "SampleResult", "SamplerConfig", "sample", "__version__",
]
