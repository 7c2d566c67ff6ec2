"""File formats: D4RL HDF5 and Minari readers/writers, validation errors, source dispatch."""
import hashlib
import json
import os

import h5py
import numpy as np
import pytest

from cleandiffuser.dataset import (
    DatasetFormatError,
    UnknownDatasetError,
    load_episodes,
    qlearning_dataset,
    read_d4rl_hdf5,
    read_minari_dataset,
    register_dataset,
    registered_datasets,
    unregister_dataset,
    write_d4rl_hdf5,
    write_minari_dataset,
)

OBS, ACT = 3, 2


# --------------------------------------------------------------------------- helpers
def make_d4rl_arrays(with_next: bool):
    """9 rows: episode A rows 0-3 ends terminal, B rows 4-6 ends by timeout, C rows 7-8 partial."""
    n = 9
    obs = (np.arange(n)[:, None] * 10 + np.arange(OBS)[None]).astype(np.float32)
    data = {
        "observations": obs,
        "actions": (np.arange(n)[:, None] + np.array([0.1, 0.2])[None]).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32) + 0.5,
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
        "infos": {"qpos": np.arange(n * 2, dtype=np.float64).reshape(n, 2)},
    }
    data["terminals"][3] = True
    data["timeouts"][6] = True
    if with_next:
        data["next_observations"] = obs + 5.0  # distinguishable from obs[i+1]
    return data


def d4rl_reference(data):
    """A literal transcription of D4RL's qlearning_dataset loop (terminate_on_end=False),
    extended to use stored next_observations (then every row has a successor)."""
    has_next = "next_observations" in data
    n = len(data["rewards"])
    rows = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for i in range(n if has_next else n - 1):
        if data["timeouts"][i]:
            continue
        rows["observations"].append(data["observations"][i])
        rows["next_observations"].append(data["next_observations"][i] if has_next else data["observations"][i + 1])
        rows["actions"].append(data["actions"][i])
        rows["rewards"].append(data["rewards"][i])
        rows["terminals"].append(bool(data["terminals"][i]))
    return {k: np.array(v, dtype=np.float32) for k, v in rows.items()}


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def raw_h5(path, arrays):
    """Write arrays verbatim (no validation) to make deliberately broken files."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def good_raw(n=6):
    return {
        "observations": np.random.randn(n, OBS).astype(np.float32),
        "actions": np.random.randn(n, ACT).astype(np.float32),
        "rewards": np.random.randn(n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
    }


# --------------------------------------------------------------------------- D4RL
@pytest.mark.parametrize("with_next", [False, True])
def test_d4rl_round_trip_qlearning(tmp_path, with_next):
    data = make_d4rl_arrays(with_next)
    path = write_d4rl_hdf5(tmp_path / "d.hdf5", data, metadata={"algorithm": "SAC", "iteration": 7})
    q = qlearning_dataset(path)
    assert set(q) == {"observations", "actions", "next_observations", "rewards", "terminals"}
    assert all(v.dtype == np.float32 for v in q.values())
    ref = d4rl_reference(data)
    for k in q:
        np.testing.assert_array_equal(q[k], ref[k], err_msg=k)

    kept = [0, 1, 2, 3, 4, 5, 7] + ([8] if with_next else [])
    assert len(q["rewards"]) == len(kept)
    np.testing.assert_array_equal(q["observations"], data["observations"][kept])
    assert 6 not in (q["observations"][:, 0] / 10).astype(int)  # timeout transition dropped
    np.testing.assert_array_equal(q["terminals"], (np.array(kept) == 3).astype(np.float32))
    row_of_3 = kept.index(3)
    if with_next:
        np.testing.assert_array_equal(q["next_observations"], data["next_observations"][kept])
    else:
        # D4RL uses obs[i+1], even across the terminal boundary; the file's last row is dropped
        np.testing.assert_array_equal(q["next_observations"][row_of_3], data["observations"][4])
        np.testing.assert_array_equal(q["next_observations"][-1], data["observations"][8])
        assert q["observations"][-1, 0] == 70.0


def test_d4rl_matches_reference_on_random_flags(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    data = good_raw(n)
    data["terminals"] = rng.random(n) < 0.05
    data["timeouts"] = (rng.random(n) < 0.05) & ~data["terminals"]
    data["timeouts"][-1] = True
    for with_next in (False, True):
        if with_next:
            data["next_observations"] = rng.standard_normal((n, OBS)).astype(np.float32)
        path = write_d4rl_hdf5(tmp_path / f"r{with_next}.hdf5", data)
        q, ref = qlearning_dataset(path), d4rl_reference(data)
        for k in q:
            np.testing.assert_array_equal(q[k], ref[k], err_msg=k)
    # terminate_on_end keeps timeout rows
    q_all = qlearning_dataset(path, terminate_on_end=True)
    assert len(q_all["rewards"]) == n


@pytest.mark.parametrize("with_next", [False, True])
def test_d4rl_episodes_and_metadata(tmp_path, with_next):
    data = make_d4rl_arrays(with_next)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    meta = {"algorithm": "SAC", "iteration": 7, "policy": {"fc0": {"weight": weight}}, "tags": ["a", "b"]}
    path = write_d4rl_hdf5(tmp_path / "d.h5", data, metadata=meta)
    with h5py.File(path, "a") as f:  # D4RL files may also carry metadata as attributes
        f["metadata"].attrs["env"] = "halfcheetah-medium-v2"
    eps = load_episodes(path)
    assert [len(e["rewards"]) for e in eps] == [4, 3, 2]
    assert eps[0]["terminals"][-1] and not eps[0]["timeouts"].any()
    assert eps[1]["timeouts"][-1] and not eps[1]["terminals"].any()
    assert not eps[2]["terminals"].any() and not eps[2]["timeouts"].any()
    np.testing.assert_array_equal(eps[1]["observations"], data["observations"][4:7])
    np.testing.assert_array_equal(eps[2]["actions"], data["actions"][7:9])
    np.testing.assert_array_equal(eps[1]["infos"]["qpos"], data["infos"]["qpos"][4:7])
    assert ("next_observations" in eps[0]) == with_next
    if with_next:
        np.testing.assert_array_equal(eps[2]["next_observations"], data["next_observations"][7:9])

    raw = read_d4rl_hdf5(path)
    md = raw["metadata"]
    assert md["algorithm"] == "SAC" and md["iteration"] == 7 and md["env"] == "halfcheetah-medium-v2"
    assert md["tags"] == ["a", "b"]
    np.testing.assert_array_equal(md["policy"]["fc0"]["weight"], weight)
    with h5py.File(path, "r") as f:  # stored layout is D4RL's
        assert f["observations"].dtype == np.float32 and f["terminals"].dtype == bool
        assert f["metadata/algorithm"][()] in (b"SAC", "SAC")


def test_d4rl_in_memory_dict_source():
    data = make_d4rl_arrays(False)
    q = qlearning_dataset({k: v for k, v in data.items() if k != "infos"})
    assert len(q["rewards"]) == 7


# --------------------------------------------------------------------------- validation
BAD_CASES = {
    "missing_key": ("actions", lambda d: d.pop("actions"), ["missing", "observations"]),
    "length_mismatch": ("rewards", lambda d: d.__setitem__("rewards", d["rewards"][:-1]), ["5", "6", "observations"]),
    "nan": ("observations", lambda d: d["observations"].__setitem__((4, 1), np.nan), ["NaN", "index 4"]),
    "inf": ("rewards", lambda d: d["rewards"].__setitem__(2, np.inf), ["inf", "index 2"]),
    "int_observations": ("observations", lambda d: d.__setitem__("observations", np.ones((6, OBS), dtype=np.int64)), ["int"]),
    "string_actions": ("actions", lambda d: d.__setitem__("actions", np.array([b"x"] * 6)), ["string"]),
    "object_rewards": ("rewards", lambda d: d.__setitem__("rewards", np.array(["a"] * 6, dtype=h5py.string_dtype())), ["string"]),
    "wrong_ndim": ("observations", lambda d: d.__setitem__("observations", np.ones(6, dtype=np.float32)), ["ndim"]),
    "non_binary_terminals": ("terminals", lambda d: d.__setitem__("terminals", np.full(6, 2.0)), ["0/1", "index 0"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_d4rl_bad_files(tmp_path, case):
    key, corrupt, fragments = BAD_CASES[case]
    data = good_raw()
    corrupt(data)
    path = tmp_path / f"{case}.hdf5"
    if case == "object_rewards":
        with h5py.File(path, "w") as f:
            for k, v in data.items():
                f.create_dataset(k, data=v, dtype=h5py.string_dtype() if k == "rewards" else None)
    else:
        raw_h5(path, data)
    before, mtime = sha(path), os.stat(path).st_mtime_ns
    for load in (qlearning_dataset, load_episodes, read_d4rl_hdf5):
        with pytest.raises(DatasetFormatError) as exc:
            load(path)
        msg = str(exc.value)
        assert str(path) in msg and f"'{key}'" in msg, msg
        for frag in fragments:
            assert frag in msg, (frag, msg)
        assert exc.value.key == key and isinstance(exc.value, ValueError)
    assert sha(path) == before and os.stat(path).st_mtime_ns == mtime


def test_d4rl_writer_rejects_bad_data_and_leaves_target_untouched(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "ok.hdf5", good_raw())
    before = sha(path)
    bad = good_raw()
    bad["actions"] = bad["actions"][:3]
    with pytest.raises(DatasetFormatError, match="actions"):
        write_d4rl_hdf5(path, bad)
    assert sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.hdf5"]  # no temp files left
    with pytest.raises(DatasetFormatError, match="missing"):
        write_d4rl_hdf5(tmp_path / "new.hdf5", {"observations": np.zeros((2, 2), np.float32)})
    assert not (tmp_path / "new.hdf5").exists()


def test_not_hdf5_file(tmp_path):
    p = tmp_path / "junk.hdf5"
    p.write_bytes(b"not an hdf5 file")
    with pytest.raises(DatasetFormatError, match="junk.hdf5"):
        qlearning_dataset(p)


# --------------------------------------------------------------------------- Minari
def make_minari_episodes():
    """ep0: 3 steps, terminated; ep1: 4 steps, truncated; ep2: 2 steps, neither."""
    rng = np.random.default_rng(0)
    eps = []
    for t, term, trunc in ((3, True, False), (4, False, True), (2, False, False)):
        e = {
            "observations": rng.standard_normal((t + 1, OBS)).astype(np.float32),
            "actions": rng.standard_normal((t, ACT)).astype(np.float32),
            "rewards": rng.standard_normal(t),
            "terminations": np.zeros(t, dtype=bool),
            "truncations": np.zeros(t, dtype=bool),
        }
        e["terminations"][-1] = term
        e["truncations"][-1] = trunc
        eps.append(e)
    return eps


def expected_minari_transitions(eps):
    return {
        "observations": np.concatenate([e["observations"][:-1] for e in eps]),
        "next_observations": np.concatenate([e["observations"][1:] for e in eps]),
        "actions": np.concatenate([e["actions"] for e in eps]),
        "rewards": np.concatenate([e["rewards"] for e in eps]).astype(np.float32),
        "terminals": np.concatenate([e["terminations"] for e in eps]).astype(np.float32),
    }


def test_minari_writer_layout(tmp_path):
    eps = make_minari_episodes()
    ds_dir = write_minari_dataset(tmp_path, "test/point-v0", eps, env_spec={"id": "Point-v0"})
    assert ds_dir == tmp_path / "test" / "point-v0"
    meta = json.loads((ds_dir / "data" / "metadata.json").read_text())
    assert meta["dataset_id"] == "test/point-v0" and meta["total_episodes"] == 3 and meta["total_steps"] == 9
    assert meta["data_format"] == "hdf5" and json.loads(meta["env_spec"]) == {"id": "Point-v0"}
    assert json.loads(meta["observation_space"])["shape"] == [OBS]
    with h5py.File(ds_dir / "data" / "main_data.hdf5", "r") as f:
        assert sorted(f.keys()) == ["episode_0", "episode_1", "episode_2"]
        g = f["episode_1"]
        assert g.attrs["id"] == 1 and g.attrs["total_steps"] == 4
        assert g["observations"].shape == (5, OBS) and g["actions"].shape == (4, ACT)
        assert g["terminations"].dtype == bool and g["truncations"][-1]
    with pytest.raises(FileExistsError):
        write_minari_dataset(tmp_path, "test/point-v0", eps)


def test_minari_read_all_path_kinds(tmp_path, monkeypatch):
    eps = make_minari_episodes()
    ds_dir = write_minari_dataset(tmp_path / "root", "test/point-v0", eps)
    expected = expected_minari_transitions(eps)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "root"))
    for source in (ds_dir, ds_dir / "data", ds_dir / "data" / "main_data.hdf5", str(ds_dir), "test/point-v0"):
        q = qlearning_dataset(source)
        assert len(q["rewards"]) == 9  # every step is a transition, truncated ones too
        for k in expected:
            np.testing.assert_array_equal(q[k], expected[k], err_msg=f"{source}: {k}")
            assert q[k].dtype == np.float32
    # terminations are terminals, truncations only end episodes
    np.testing.assert_array_equal(np.flatnonzero(q["terminals"]), [2])
    got = load_episodes("test/point-v0")
    assert [len(e["rewards"]) for e in got] == [3, 4, 2]
    assert got[0]["terminals"][-1] and not got[0]["timeouts"].any()
    assert got[1]["timeouts"][-1] and not got[1]["terminals"].any()
    np.testing.assert_array_equal(got[1]["next_observations"], eps[1]["observations"][1:])
    # the writer accepts the reader's episode format (T obs + next_observations): round trip
    write_minari_dataset(tmp_path / "root", "copy-v0", got)
    q2 = qlearning_dataset("copy-v0")
    for k in expected:
        np.testing.assert_array_equal(q2[k], expected[k])


def test_minari_default_root_and_unknown_id(tmp_path, monkeypatch):
    monkeypatch.delenv("MINARI_DATASETS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    write_minari_dataset(tmp_path / ".minari" / "datasets", "home-v0", make_minari_episodes())
    assert len(qlearning_dataset("home-v0")["rewards"]) == 9
    with pytest.raises(UnknownDatasetError) as exc:
        qlearning_dataset("nope-v0")
    assert "nope-v0" in str(exc.value) and "Minari" in str(exc.value)
    with pytest.raises(UnknownDatasetError, match=r"no such file or Minari dataset: .*missing\.hdf5"):
        qlearning_dataset(str(tmp_path / "missing.hdf5"))  # a path says it is missing, not that it is unknown


def test_minari_dict_observations_and_episode_order(tmp_path):
    rng = np.random.default_rng(0)
    eps = []
    for i in range(12):  # episode_10 must come after episode_9 (numeric order)
        t = 2
        eps.append({
            "observations": {"b": np.full((t + 1, 2), i, np.float32), "a": rng.standard_normal((t + 1, 1)).astype(np.float32),
                             "c": {"z": np.arange(t + 1)[:, None].astype(np.int64)}},
            "actions": np.zeros((t, ACT), np.float32),
            "rewards": np.full(t, float(i)),
            "terminations": np.zeros(t, bool),
            "truncations": np.array([False, True]),
        })
    ds_dir = write_minari_dataset(tmp_path, "dict-v0", eps)
    raw = read_minari_dataset(ds_dir)
    assert [e["id"] for e in raw["episodes"]] == list(range(12))
    q = qlearning_dataset(ds_dir)
    assert q["observations"].shape == (24, 4)  # sorted keys: a (1) | b (2) | c/z (1)
    np.testing.assert_array_equal(q["rewards"], np.repeat(np.arange(12), 2))
    np.testing.assert_array_equal(q["observations"][:2, 0], eps[0]["observations"]["a"][:2, 0])
    np.testing.assert_array_equal(q["observations"][-1, 1:3], [11, 11])
    np.testing.assert_array_equal(q["next_observations"][:2, 3], [1, 2])


def _minari_with(tmp_path, mutate):
    ds_dir = write_minari_dataset(tmp_path, "bad-v0", make_minari_episodes())
    path = ds_dir / "data" / "main_data.hdf5"
    with h5py.File(path, "a") as f:
        mutate(f)
    return ds_dir, path


@pytest.mark.parametrize("case,key,frags", [
    ("missing", "episode_1/truncations", ["missing", "terminations"]),
    ("short_obs", "episode_2/observations", ["2 rows", "episode_2/actions"]),
    ("nan", "episode_0/rewards", ["NaN", "index 1"]),
    ("int_obs", "episode_0/observations", ["int"]),
])
def test_minari_bad_files(tmp_path, case, key, frags):
    def mutate(f):
        if case == "missing":
            del f["episode_1/truncations"]
        elif case == "short_obs":
            obs = f["episode_2/observations"][()]
            del f["episode_2/observations"]
            f["episode_2/observations"] = obs[:-1]
        elif case == "nan":
            r = f["episode_0/rewards"][()]
            r[1] = np.nan
            f["episode_0/rewards"][...] = r
        elif case == "int_obs":
            obs = f["episode_0/observations"][()]
            del f["episode_0/observations"]
            f["episode_0/observations"] = obs.astype(np.int32)
    ds_dir, path = _minari_with(tmp_path, mutate)
    before = sha(path)
    with pytest.raises(DatasetFormatError) as exc:
        qlearning_dataset(ds_dir)
    msg = str(exc.value)
    assert str(path) in msg and key in msg, msg
    for frag in frags:
        assert frag in msg, (frag, msg)
    assert sha(path) == before


def test_minari_writer_validates_before_writing(tmp_path):
    eps = make_minari_episodes()
    eps[1]["observations"] = eps[1]["observations"][:-2]  # neither T+1 nor T rows
    with pytest.raises(DatasetFormatError, match="episode_1/observations"):
        write_minari_dataset(tmp_path, "w-v0", eps)
    assert not (tmp_path / "w-v0" / "data" / "main_data.hdf5").exists()


# --------------------------------------------------------------------------- registry
def test_registry_dispatch(tmp_path):
    d4rl_path = write_d4rl_hdf5(tmp_path / "gen.hdf5", make_d4rl_arrays(True))
    minari_dir = write_minari_dataset(tmp_path, "m-v0", make_minari_episodes())
    calls = []
    register_dataset("test-gen-cd-v0", lambda: calls.append(1) or d4rl_path)
    register_dataset("test-minari-cd-v0", minari_dir)  # a plain path works too
    try:
        assert {"test-gen-cd-v0", "test-minari-cd-v0"} <= set(registered_datasets())
        assert len(qlearning_dataset("test-gen-cd-v0")["rewards"]) == 8 and calls == [1]
        assert len(load_episodes("test-minari-cd-v0")) == 3
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("test-gen-cd-v0", lambda: d4rl_path)
        with pytest.raises(UnknownDatasetError) as exc:
            qlearning_dataset("halfcheetah-nothing-v9")
        msg = str(exc.value)
        assert "test-gen-cd-v0" in msg and "D4RL" in msg and "Minari" in msg and "halfcheetah-nothing-v9" in msg
    finally:
        unregister_dataset("test-gen-cd-v0")
        unregister_dataset("test-minari-cd-v0")
    assert "test-gen-cd-v0" not in registered_datasets()
