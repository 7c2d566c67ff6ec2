"""Normalizers, torch datasets, the in-memory batch sampler and loop_dataloader."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cleandiffuser.dataset import (
    D4RLMuJoCoDataset,
    D4RLMuJoCoTDDataset,
    GaussianNormalizer,
    ImageNormalizer,
    MinMaxNormalizer,
    TensorBatchSampler,
    load_episodes,
)
from cleandiffuser.dataset.dataset_utils import loop_dataloader


# --------------------------------------------------------------------------- normalizers
def data_with_constant_dim():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 4)) * [1.0, 5.0, 0.1, 1.0] + [0.0, 3.0, -2.0, 0.0]).astype(np.float32)
    x[:, 3] = 7.25  # constant dim
    return x


@pytest.mark.parametrize("cls", [GaussianNormalizer, MinMaxNormalizer])
def test_normalizer_round_trip_numpy_and_torch(cls):
    x = data_with_constant_dim()
    norm = cls(x)
    y = norm.normalize(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(norm.unnormalize(y), x, atol=1e-5)
    # torch, any leading dims, dtype and device preserved
    t = torch.from_numpy(x).reshape(5, 100, 4)
    ty = norm.normalize(t)
    assert isinstance(ty, torch.Tensor) and ty.shape == t.shape and ty.dtype == torch.float32 and ty.device == t.device
    np.testing.assert_allclose(ty.reshape(500, 4).numpy(), y, atol=1e-6)
    torch.testing.assert_close(norm.unnormalize(ty), t, atol=1e-5, rtol=0)
    t64 = t.double()
    assert norm.normalize(t64).dtype == torch.float64
    # state dict: plain arrays only, exact round trip
    sd = norm.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    norm2 = cls.from_state_dict(sd)
    np.testing.assert_array_equal(norm2.normalize(x), y)
    norm3 = cls.from_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # e.g. from safetensors
    np.testing.assert_array_equal(norm3.normalize(x), y)


def test_gaussian_stats_and_constant_dim():
    x = data_with_constant_dim()
    norm = GaussianNormalizer(x)
    y = norm.normalize(x)
    np.testing.assert_allclose(y[:, :3].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y[:, :3].std(0), 1, atol=1e-4)
    assert norm.std[3] == 1.0 and np.all(y[:, 3] == 0)


def test_minmax_exact_extremes_and_constant_dims():
    x = data_with_constant_dim()
    norm = MinMaxNormalizer(x)
    for y in (norm.normalize(x), norm.normalize(torch.from_numpy(x)).numpy()):
        np.testing.assert_array_equal(y[:, :3].min(0), -1.0)
        np.testing.assert_array_equal(y[:, :3].max(0), 1.0)
        assert np.all(y[:, 3] == 0.0)  # constant dim -> 0, no division by zero
        assert y.min() >= -1 and y.max() <= 1
    np.testing.assert_array_equal(norm.constant_dims, [False, False, False, True])
    # values off the constant are still invertible
    z = x[:3].copy()
    z[:, 3] = 8.0
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(z)), z, atol=1e-5)
    # float64 data: extremes also exact
    x64 = x.astype(np.float64)
    y64 = MinMaxNormalizer(x64).normalize(x64)
    assert y64[:, 0].min() == -1.0 and y64[:, 0].max() == 1.0


def test_image_normalizer():
    norm = ImageNormalizer()
    img = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    y = norm.normalize(img)
    assert y.dtype == np.float32 and y.min() >= -1 and y.max() <= 1
    assert norm.normalize(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]
    np.testing.assert_array_equal(norm.unnormalize(y, to_uint8=True), img)
    f = img.astype(np.float32) / 255
    np.testing.assert_allclose(norm.normalize(f), y, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(norm.normalize(f)), f, atol=1e-6)
    t = torch.from_numpy(img)
    ty = norm.normalize(t)
    assert ty.dtype == torch.float32
    assert torch.equal(norm.unnormalize(ty, to_uint8=True), t)
    assert ImageNormalizer.from_state_dict(norm.state_dict()).normalize(np.float32(1.0)) == 1.0


# --------------------------------------------------------------------------- TD dataset
def make_qlearning_dict():
    """Three episodes with returns 10, 30, 60: ep0 ends terminal (rows 0-3), ep1 is
    separated from ep2 only by an observation discontinuity (rows 4-6), ep2 rows 7-9."""
    rng = np.random.default_rng(0)
    lens, rets = [4, 3, 3], [10.0, 30.0, 60.0]
    obs, nxt, rew, tml = [], [], [], []
    for i, (t, r) in enumerate(zip(lens, rets)):
        states = rng.standard_normal((t + 1, 5)) * (i + 1) + i
        obs.append(states[:-1])
        nxt.append(states[1:])
        rew.append(np.full(t, r / t))
        term = np.zeros(t)
        term[-1] = float(i == 0)
        tml.append(term)
    cat = lambda xs: np.concatenate(xs).astype(np.float32)  # noqa: E731
    return {"observations": cat(obs), "next_observations": cat(nxt), "actions": rng.uniform(-1, 1, (10, 2)).astype(np.float32),
            "rewards": cat(rew), "terminals": cat(tml)}


def test_td_dataset_items_and_normalization():
    d = make_qlearning_dict()
    ds = D4RLMuJoCoTDDataset(d)
    assert len(ds) == ds.size == 10 and ds.o_dim == 5 and ds.a_dim == 2 and ds.reward_scale == 1.0
    item = ds[3]
    assert set(item) == {"obs", "next_obs", "act", "rew", "tml"}
    shapes = {"obs": (5,), "next_obs": (5,), "act": (2,), "rew": (1,), "tml": (1,)}
    for k, shape in shapes.items():
        v = item[k]["state"] if k in ("obs", "next_obs") else item[k]
        assert v.shape == shape and v.dtype == torch.float32, k
    assert item["tml"].item() == 1.0
    torch.testing.assert_close(item["act"], torch.from_numpy(d["actions"][3]))  # actions raw
    obs = torch.stack([ds[i]["obs"]["state"] for i in range(10)])
    torch.testing.assert_close(obs.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(obs.std(0, unbiased=False), torch.ones(5), atol=1e-4, rtol=0)
    norm = ds.get_normalizer()
    np.testing.assert_allclose(ds[2]["next_obs"]["state"].numpy(), norm.normalize(d["next_observations"][2]), atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(ds[2]["obs"]["state"].numpy()), d["observations"][2], atol=1e-5)
    t = ds.tensors()
    assert t["obs"]["state"].shape == (10, 5) and t["rew"].shape == (10, 1)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["obs"]["state"].shape == (4, 5)


def test_td_dataset_reward_normalization():
    d = make_qlearning_dict()
    ds = D4RLMuJoCoTDDataset(d, normalize_reward=True)
    assert ds.reward_scale == pytest.approx(1000.0 / (60.0 - 10.0), rel=1e-6)
    np.testing.assert_allclose(ds.tensors()["rew"][:, 0].numpy(), d["rewards"] * 20.0, rtol=1e-5)
    # without the observation discontinuity, episodes 1 and 2 merge: returns 10 and 90
    d2 = dict(d)
    d2["observations"] = d["observations"].copy()
    d2["observations"][7] = d["next_observations"][6]
    assert D4RLMuJoCoTDDataset(d2, normalize_reward=True).reward_scale == pytest.approx(1000.0 / 80.0, rel=1e-6)


# --------------------------------------------------------------------------- sampler
def row_tensors(n=20):
    i = torch.arange(n, dtype=torch.float32)
    return {"obs": {"state": i[:, None].repeat(1, 3)}, "next_obs": {"state": (i + 1)[:, None].repeat(1, 3)},
            "act": torch.stack([2 * i, -i], 1), "rew": i[:, None] * 10, "idx": torch.arange(n)}


def test_sampler_batches_are_real_aligned_rows():
    s = TensorBatchSampler(row_tensors(), batch_size=64, generator=0)
    b = s.sample()
    assert set(b) == {"obs", "next_obs", "act", "rew", "idx"} and set(b["obs"]) == {"state"}
    assert b["obs"]["state"].shape == (64, 3) and b["act"].shape == (64, 2) and b["idx"].dtype == torch.int64
    i = b["obs"]["state"][:, 0]
    assert torch.equal(b["idx"].float(), i)
    assert torch.equal(b["next_obs"]["state"][:, 0], i + 1)
    assert torch.equal(b["act"], torch.stack([2 * i, -i], 1)) and torch.equal(b["rew"][:, 0], i * 10)


def test_sampler_seeding_and_resume():
    a = TensorBatchSampler(row_tensors(), 16, generator=123)
    b = TensorBatchSampler(row_tensors(), 16, generator=123)
    for _ in range(3):
        assert torch.equal(a.sample()["idx"], b.sample()["idx"])
    state = a.state_dict()
    expected = [a.sample()["idx"] for _ in range(4)]
    c = TensorBatchSampler(row_tensors(), 16, generator=999)
    c.load_state_dict(state)
    assert all(torch.equal(c.sample()["idx"], e) for e in expected)
    # generator=None follows torch's global seed
    torch.manual_seed(5)
    d1 = TensorBatchSampler(row_tensors(), 16).sample()["idx"]
    torch.manual_seed(5)
    d2 = TensorBatchSampler(row_tensors(), 16).sample()["idx"]
    assert torch.equal(d1, d2)
    # an explicit generator object is used as is; iteration is infinite
    g = torch.Generator().manual_seed(7)
    it = iter(TensorBatchSampler(row_tensors(), 8, generator=g))
    assert [next(it)["idx"].shape for _ in range(3)] == [(8,)] * 3


def test_sampler_uniform_coverage_and_errors():
    n, draws = 20, 20000
    s = TensorBatchSampler(row_tensors(n), batch_size=1000, generator=0)
    counts = torch.bincount(torch.cat([s.sample()["idx"] for _ in range(draws // 1000)]), minlength=n).double()
    expected = draws / n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60.0, chi2  # 19 dof: mean 19, sd ~6.2
    with pytest.raises(ValueError, match="rows"):
        TensorBatchSampler({"a": torch.zeros(3, 2), "b": {"c": torch.zeros(4)}}, 2)


def test_sampler_on_td_dataset_tensors():
    ds = D4RLMuJoCoTDDataset(make_qlearning_dict())
    b = TensorBatchSampler(ds.tensors(), 32, generator=1).sample()
    ref = ds[0]
    assert set(b) == set(ref) and b["obs"]["state"].shape == (32, ds.o_dim) and b["tml"].shape == (32, 1)


# --------------------------------------------------------------------------- sequence dataset
def make_episodes():
    rng = np.random.default_rng(0)
    eps = []
    for t, term, timeout in ((5, True, False), (3, False, True)):
        e = {"observations": rng.standard_normal((t, 4)).astype(np.float32),
             "actions": rng.standard_normal((t, 2)).astype(np.float32),
             "rewards": rng.uniform(0, 1, t).astype(np.float32),
             "terminals": np.zeros(t, bool), "timeouts": np.zeros(t, bool)}
        e["terminals"][-1], e["timeouts"][-1] = term, timeout
        eps.append(e)
    return eps


def test_sequence_dataset_windows_padding_and_values():
    eps = make_episodes()
    H, L, gamma = 4, 6, 0.9
    ds = D4RLMuJoCoDataset(eps, horizon=H, discount=gamma, terminal_penalty=-100, max_path_length=L)
    # starts 0..min(T-1, L-H) = 0..2 for both episodes
    assert len(ds) == 6 and ds.indices.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    all_obs = np.concatenate([e["observations"] for e in eps])
    mean, std = all_obs.mean(0), all_obs.std(0)

    item = ds[1]  # episode 0, start 1: rows 1..4, fully inside the episode
    assert item["obs"]["state"].shape == (H, 4) and item["act"].shape == (H, 2)
    assert item["rew"].shape == (H, 1) and item["val"].shape == (1,)
    assert all(v.dtype == torch.float32 for v in (item["obs"]["state"], item["act"], item["rew"], item["val"]))
    np.testing.assert_allclose(item["obs"]["state"].numpy(), (eps[0]["observations"][1:5] - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(item["act"].numpy(), eps[0]["actions"][1:5])
    rew0 = eps[0]["rewards"].astype(np.float64).copy()
    rew0[-1] = -100.0  # terminal penalty on the true terminal step
    np.testing.assert_allclose(item["rew"][:, 0].numpy(), rew0[1:5], atol=1e-6)
    val = sum(gamma ** k * rew0[1 + k] for k in range(4))
    assert item["val"].item() == pytest.approx(val, rel=1e-5)

    item = ds[5]  # episode 1 (timeout: no penalty), start 2: row 2 then padding
    np.testing.assert_allclose(item["obs"]["state"][0].numpy(), (eps[1]["observations"][2] - mean) / std, atol=1e-5)
    assert torch.all(item["obs"]["state"][1:] == 0) and torch.all(item["act"][1:] == 0) and torch.all(item["rew"][1:] == 0)
    assert item["rew"][0, 0].item() == pytest.approx(float(eps[1]["rewards"][2]))
    assert ds[3]["val"].item() == pytest.approx(sum(gamma ** k * float(eps[1]["rewards"][k]) for k in range(3)), rel=1e-5)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["obs"]["state"].shape == (3, H, 4) and batch["val"].shape == (3, 1)


def test_sequence_dataset_from_loaded_episodes(tmp_path):
    from cleandiffuser.dataset import write_d4rl_hdf5
    eps = make_episodes()
    data = {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}
    path = write_d4rl_hdf5(tmp_path / "seq.hdf5", data)
    ds = D4RLMuJoCoDataset(load_episodes(path), horizon=2, max_path_length=8, discount=0.5)
    assert len(ds) == 5 + 3
    with pytest.raises(ValueError, match="max_path_length"):
        D4RLMuJoCoDataset(eps, horizon=2, max_path_length=4)


# --------------------------------------------------------------------------- loop_dataloader
def test_loop_dataloader_cycles():
    dl = DataLoader(list(range(5)), batch_size=2)
    it = loop_dataloader(dl)
    got = [next(it).tolist() for _ in range(7)]
    assert got == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4], [0, 1]]
    with pytest.raises(ValueError):
        next(loop_dataloader([]))
