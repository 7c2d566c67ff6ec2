"""Offline data: file formats (D4RL HDF5, Minari), validation, normalizers, torch
datasets and fast batch sampling.

Entry points::

    from cleandiffuser.dataset import qlearning_dataset, load_episodes
    data = qlearning_dataset("path/to/file.hdf5")          # or a Minari path/id, or a registered name
    ds = D4RLMuJoCoTDDataset(data, normalize_reward=True)
    sampler = TensorBatchSampler(ds.tensors(), batch_size=256, device="cuda", generator=0)
"""
from .d4rl_format import (
    d4rl_episodes,
    d4rl_qlearning_dataset,
    episodes_from_arrays,
    qlearning_from_arrays,
    read_d4rl_hdf5,
    validate_d4rl_arrays,
    write_d4rl_hdf5,
)
from .d4rl_mujoco_dataset import D4RLMuJoCoDataset, D4RLMuJoCoTDDataset, iql_reward_scale
from .dataset_utils import TensorBatchSampler, loop_dataloader
from .minari_format import (
    find_minari_dataset,
    minari_datasets_root,
    minari_episodes,
    minari_qlearning_dataset,
    read_minari_dataset,
    write_minari_dataset,
)
from .normalizers import BaseNormalizer, GaussianNormalizer, ImageNormalizer, MinMaxNormalizer
from .sources import (
    UnknownDatasetError,
    load_episodes,
    qlearning_dataset,
    recorded_env_id,
    register_dataset,
    registered_datasets,
    resolve_source,
    unregister_dataset,
)
from .validation import DatasetFormatError
from .chunking import (
    ChunkBatchSampler,
    ChunkedDataset,
    ChunkIndex,
    LinearNormalizer,
    actions_to_delta,
    delta_to_actions,
    sample_sequence,
    sequence_indices,
)
from .robomimic_format import RobomimicData, read_robomimic_hdf5, write_robomimic_hdf5
from .zarr_format import read_zarr_replay, read_zarr_replay_arrays, write_zarr_replay

__all__ = [
    # sources / registry
    "qlearning_dataset",
    "load_episodes",
    "recorded_env_id",
    "register_dataset",
    "unregister_dataset",
    "registered_datasets",
    "resolve_source",
    "UnknownDatasetError",
    # formats
    "DatasetFormatError",
    "read_d4rl_hdf5",
    "validate_d4rl_arrays",
    "qlearning_from_arrays",
    "episodes_from_arrays",
    "d4rl_qlearning_dataset",
    "d4rl_episodes",
    "write_d4rl_hdf5",
    "read_minari_dataset",
    "minari_episodes",
    "minari_qlearning_dataset",
    "write_minari_dataset",
    "find_minari_dataset",
    "minari_datasets_root",
    # normalizers
    "BaseNormalizer",
    "GaussianNormalizer",
    "MinMaxNormalizer",
    "ImageNormalizer",
    # datasets / sampling
    "D4RLMuJoCoTDDataset",
    "D4RLMuJoCoDataset",
    "iql_reward_scale",
    "TensorBatchSampler",
    "loop_dataloader",
    # imitation learning: robomimic / DP zarr formats, action chunks
    "RobomimicData",
    "read_robomimic_hdf5",
    "write_robomimic_hdf5",
    "read_zarr_replay",
    "read_zarr_replay_arrays",
    "write_zarr_replay",
    "sequence_indices",
    "ChunkIndex",
    "sample_sequence",
    "actions_to_delta",
    "delta_to_actions",
    "LinearNormalizer",
    "ChunkedDataset",
    "ChunkBatchSampler",
]

# Register the names of the datasets this library generates (cheap: no simulator is imported).
from .. import datagen as _datagen  # noqa: E402,F401
