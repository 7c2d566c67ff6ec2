"""Imitation learning with chunked-action diffusion and consistency policies.

Consistency Policy (Prasad et al., RSS 2024) on top of Diffusion Policy's conventions: train an EDM
teacher (`policy.kind=edm`), distil a one-step CTM student from it (`policy.kind=ctm`), or train the
DDPM/DDIM baseline (`policy.kind=ddim`); deploy with `get_policy` and `PolicyWrapper` (`BatchPolicyWrapper`:
several environments in lockstep).

    from cleandiffuser.imitation import get_policy, PolicyWrapper
    policy = get_policy("runs/imitation/ctmp_lift")       # run directory or .ckpt file
    pw = PolicyWrapper(policy, n_obs=2, n_acts=8)
    action = pw.get_action(obs)                           # one raw observation in, one action out

Training: `train_imitation(load_imitation_config("imitation/edm_lift", ["task.dataset_path=..."]))`
or `run_from_cli(...)` (Push-T: imitation/{edm,ctmp,ddim}_pusht; a transformer denoiser:
policy.backbone=transformer); evaluating a finished run again: `evaluate_run_imitation(run_dir, ...)`
(`cleandiffuser eval RUN_DIR`); see docs/imitation.md.
"""
from .checkpoint import get_policy, load_policy, save_policy
from .config import check_imitation_config, load_imitation_config
from .encoder import ObsEncoder, parse_shape_meta
from .evaluate import evaluate_run_imitation, make_evaluator, pusht_evaluator
from .policy import ChunkPolicy, measure_latency_ms
from .train import (
                    is_imitation_config,
                    is_imitation_run,
                    load_imitation_data,
                    robosuite_evaluator,
                    run_from_cli,
                    train_imitation,
)
from .wrapper import BatchPolicyWrapper, PolicyWrapper

__all__ = [
                    "BatchPolicyWrapper",
                    "ChunkPolicy",
                    "ObsEncoder",
                    "PolicyWrapper",
                    "check_imitation_config",
                    "evaluate_run_imitation",
                    "get_policy",
                    "is_imitation_config",
                    "is_imitation_run",
                    "load_imitation_config",
                    "load_imitation_data",
                    "load_policy",
                    "make_evaluator",
                    "measure_latency_ms",
                    "parse_shape_meta",
                    "pusht_evaluator",
                    "robosuite_evaluator",
                    "run_from_cli",
                    "save_policy",
                    "train_imitation",
]
