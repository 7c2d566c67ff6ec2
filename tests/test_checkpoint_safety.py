"""Loading a checkpoint never runs code: only allowlisted classes are built, from JSON arguments (issue 38.1)."""
import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from cleandiffuser.diffusion import ContinuousEDM, load_model
from cleandiffuser.nn_diffusion import BaseNNDiffusion, IDQLMlp
from cleandiffuser.serialization import (CheckpointError, buildable_classes, build_from_config, load_checkpoint,
                                         register_buildable)
from toy_training import FAST, small_net


@pytest.fixture()
def saved(tmp_path):
    """A genuine model checkpoint to tamper with: (path, tensors, meta)."""
    model = ContinuousEDM(small_net(), **FAST)
    path = tmp_path / "edm.ckpt"
    model.save(path)
    tensors, meta = load_checkpoint(path)
    return path, tensors, meta


def write_tampered(path, tensors, meta) -> None:
    """A valid safetensors file (no pickle) whose cleandiffuser metadata says whatever the attacker wants."""
    save_file(tensors, str(path), metadata={"cleandiffuser": json.dumps(meta)})


def side_effect_config(target):
    """Names a library function that writes a file: building it would call it."""
    return {"__class__": "cleandiffuser.runner.rundir.write_results_page",
            "kwargs": {"path": str(target), "generated": "pwned"}}


def test_a_function_named_as_the_model_is_refused_and_never_called(tmp_path, saved):
    path, tensors, meta = saved
    target = tmp_path / "pwned.md"
    meta["config"] = side_effect_config(target)
    write_tampered(path, tensors, meta)
    with pytest.raises(CheckpointError, match="write_results_page") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert not target.exists()


def test_a_function_nested_in_the_arguments_is_refused_and_never_called(tmp_path, saved):
    path, tensors, meta = saved
    target = tmp_path / "pwned.md"
    genuine = copy.deepcopy(meta)
    meta["config"]["kwargs"]["nn_diffusion"] = side_effect_config(target)
    write_tampered(path, tensors, meta)
    with pytest.raises(CheckpointError, match=r"kwargs\.nn_diffusion"):
        load_model(path)
    assert not target.exists()
    meta = genuine  # two levels down: a condition whose argument is a call
    meta["config"]["kwargs"]["nn_condition"] = {
        "__class__": "cleandiffuser.nn_condition.identity.IdentityCondition",
        "kwargs": {"dropout": {"__class__": "os.system", "kwargs": {"command": f"touch {target}"}}}}
    write_tampered(path, tensors, meta)
    with pytest.raises(CheckpointError, match="os.system"):
        load_model(path)
    assert not target.exists()


@pytest.mark.parametrize("name", [
    "cleandiffuser.runner.rundir.Path",                  # a class, but not a model, network or condition
    "cleandiffuser.datagen.sac.SACConfig",               # a library class outside the allowlist
    "subprocess.Popen",                                   # outside the package
    "builtins.eval",
    "cleandiffuser.diffusion.base.load_model",           # a library function
])
def test_anything_off_the_allowlist_is_refused(tmp_path, saved, name):
    path, tensors, meta = saved
    meta["config"] = {"__class__": name, "kwargs": {}}
    write_tampered(path, tensors, meta)
    with pytest.raises(CheckpointError, match="will not construct"):
        load_model(path)


def test_the_allowlist_holds_models_networks_and_conditions_only():
    allowed = buildable_classes()
    assert "cleandiffuser.diffusion.edm.ContinuousEDM" in allowed
    assert "cleandiffuser.nn_diffusion.idqlmlp.IDQLMlp" in allowed
    assert "cleandiffuser.nn_condition.identity.IdentityCondition" in allowed
    assert not any(path.rpartition(".")[2].startswith("_") for path in allowed)
    from cleandiffuser.diffusion import DiffusionModel
    from cleandiffuser.nn_condition import BaseNNCondition
    for path, cls in allowed.items():
        assert issubclass(cls, (DiffusionModel, BaseNNDiffusion, BaseNNCondition)), path


def test_arguments_must_be_known_keywords_with_json_values(tmp_path, saved):
    path, tensors, meta = saved
    meta["config"]["kwargs"]["nn_diffusion"]["kwargs"]["evil"] = 1
    write_tampered(path, tensors, meta)
    with pytest.raises(CheckpointError, match="unknown arguments.*evil"):
        load_model(path)
    with pytest.raises(CheckpointError, match="tensor literal"):
        build_from_config({"__class__": "cleandiffuser.nn_condition.identity.IdentityCondition",
                           "kwargs": {"dropout": {"__tensor__": ["rm -rf /"]}}}, source="x.ckpt")
    with pytest.raises(CheckpointError, match="x.ckpt.*__class__"):
        build_from_config({"__class__": "cleandiffuser.nn_condition.identity.IdentityCondition", "kwargs": {},
                           "extra": 1}, source="x.ckpt")


def test_a_damaged_header_names_the_file(tmp_path, saved):
    path, tensors, _ = saved
    save_file(tensors, str(path), metadata={"cleandiffuser": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        load_model(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a cleandiffuser checkpoint"):
        load_model(path)


def test_a_run_checkpoint_given_to_load_model_says_what_to_use(tmp_path, saved):
    path, tensors, _ = saved
    write_tampered(path, tensors, {"format": "cleandiffuser-run/1", "step": 3})
    with pytest.raises(CheckpointError, match="load_agent"):
        load_model(path)


class UserNet(BaseNNDiffusion):
    """A user's own backbone: rebuilt from checkpoints only once registered."""

    def __init__(self, act_dim: int = 2, width: int = 16):
        super().__init__(emb_dim=8)
        self.net = torch.nn.Sequential(torch.nn.Linear(act_dim + 8, width), torch.nn.Mish(),
                                       torch.nn.Linear(width, act_dim))

    def forward(self, x, noise, condition=None):
        return self.net(torch.cat([x, self.map_noise(noise)], -1))


def test_a_users_class_is_rebuilt_only_after_it_is_registered(tmp_path):
    path = tmp_path / "user.ckpt"
    ContinuousEDM(UserNet(width=12), **FAST).save(path)
    with pytest.raises(CheckpointError, match="register_buildable"):
        load_model(path)
    register_buildable(UserNet)
    rebuilt = load_model(path)
    assert isinstance(rebuilt.model["diffusion"], UserNet) and rebuilt.model["diffusion"].net[0].out_features == 12
    with pytest.raises(TypeError):
        register_buildable(len)


def test_genuine_checkpoints_still_rebuild(tmp_path):
    model = ContinuousEDM(IDQLMlp(3, 2, emb_dim=16, hidden_dim=32, n_blocks=1, timestep_emb_type="untrainable_fourier"),
                          **FAST)
    model.save(tmp_path / "m.ckpt")
    rebuilt = load_model(tmp_path / "m.ckpt")
    assert rebuilt.model["diffusion"].state_dict().keys() == model.model["diffusion"].state_dict().keys()
