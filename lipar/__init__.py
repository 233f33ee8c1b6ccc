"""LIPAR: Latent Inter-Frame Pruning with Attention Recovery for Self-Forcing (Wan2.1).

Host-independent library: no ComfyUI imports. See README.md.
"""

from lipar.config import TINY, WAN_1_3B, WanConfig, infer_config, preset
from lipar.errors import LiparError
from lipar.model import WanDiT, build_model
from lipar.plan import PlanConfig, PruningPlan, build_plan, empty_plan
from lipar.recovery import RECOVERY_FORMS, RECOVERY_MODES
from lipar.restore import restore_latent
from lipar.sampler import PassInfo, SampleResult, SamplerConfig, sample

__version__ = "0.1.0"

__all__ = [
    "TINY", "WAN_1_3B", "WanConfig", "infer_config", "preset", "LiparError", "WanDiT", "build_model",
    "PlanConfig", "PruningPlan", "build_plan", "empty_plan", "RECOVERY_FORMS", "RECOVERY_MODES",
    "restore_latent", "PassInfo", "SampleResult", "SamplerConfig", "sample", "__version__",
]
