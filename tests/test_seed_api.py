"""The seeds' code, verbatim in its API use, on a small D4RL-format file written here."""
from copy import deepcopy

import numpy as np
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader

from cleandiffuser.dataset import qlearning_dataset, write_d4rl_hdf5
from cleandiffuser.dataset.d4rl_mujoco_dataset import D4RLMuJoCoTDDataset
from cleandiffuser.dataset.dataset_utils import loop_dataloader
from cleandiffuser.diffusion import ContinuousEDM
from cleandiffuser.diffusion.consistency_model import ContinuousConsistencyModel
from cleandiffuser.diffusion.diffusionsde import DiscreteDiffusionSDE
from cleandiffuser.nn_condition import IdentityCondition, PearceObsCondition
from cleandiffuser.nn_diffusion import IDQLMlp, PearceMlp
from cleandiffuser.utils import IDQLQNet, IDQLVNet, set_seed

device = "cpu"


def _d4rl_file(path, n=600, obs_dim=5, act_dim=3):
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, bool)
    timeouts[199::200] = True
    write_d4rl_hdf5(path, {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool), "timeouts": timeouts})
    return path


def test_seed_000_consistency_idql_workflow(tmp_path):
    set_seed(0)
    save_path = str(tmp_path) + "/"
    dataset = D4RLMuJoCoTDDataset(qlearning_dataset(str(_d4rl_file(tmp_path / "d.hdf5"))), True)
    dataloader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0, drop_last=True)
    obs_dim, act_dim = dataset.o_dim, dataset.a_dim

    # iql_training
    iql_q = IDQLQNet(obs_dim, act_dim).to(device)
    iql_q_target = deepcopy(iql_q).requires_grad_(False).eval()
    iql_v = IDQLVNet(obs_dim).to(device)
    q_optim = torch.optim.Adam(iql_q.parameters(), lr=3e-4)
    v_optim = torch.optim.Adam(iql_v.parameters(), lr=3e-4)
    for n, batch in enumerate(loop_dataloader(dataloader)):
        obs, next_obs = batch["obs"]["state"].to(device), batch["next_obs"]["state"].to(device)
        act, rew, tml = batch["act"].to(device), batch["rew"].to(device), batch["tml"].to(device)
        q, v = iql_q_target(obs, act), iql_v(obs)
        v_loss = (torch.abs(0.7 - ((q - v) < 0).float()) * (q - v) ** 2).mean()
        v_optim.zero_grad(), v_loss.backward(), v_optim.step()
        with torch.no_grad():
            td_target = rew + 0.99 * (1 - tml) * iql_v(next_obs)
        q1, q2 = iql_q.both(obs, act)
        q_loss = ((q1 - td_target) ** 2 + (q2 - td_target) ** 2).mean()
        q_optim.zero_grad(), q_loss.backward(), q_optim.step()
        if n == 5:
            break

    # edm_training
    actor = ContinuousEDM(
        IDQLMlp(obs_dim, act_dim, emb_dim=64, timestep_emb_type="untrainable_fourier"),
        IdentityCondition(dropout=0.0), optim_params={"lr": 3e-4},
        x_max=+1. * torch.ones((1, act_dim)), x_min=-1. * torch.ones((1, act_dim)), ema_rate=0.9999, device=device)
    actor_lr_scheduler = CosineAnnealingLR(actor.optimizer, T_max=10)
    actor.train()
    for n, batch in enumerate(loop_dataloader(dataloader)):
        bc_loss = actor.update(batch["act"].to(device), batch["obs"]["state"].to(device))["loss"]
        actor_lr_scheduler.step()
        assert isinstance(bc_loss, float)
        if n == 5:
            break
    actor.save(save_path + "edm_ckpt_latest.pt")

    # cd_training
    edm_actor = ContinuousEDM(
        IDQLMlp(obs_dim, act_dim, emb_dim=64, timestep_emb_type="untrainable_fourier"),
        IdentityCondition(dropout=0.0), optim_params={"lr": 3e-4},
        x_max=+1. * torch.ones((1, act_dim)), x_min=-1. * torch.ones((1, act_dim)), ema_rate=0.9999, device=device)
    edm_actor.load(save_path + "edm_ckpt_latest.pt")
    edm_actor.eval()
    cd = ContinuousConsistencyModel(
        IDQLMlp(obs_dim, act_dim, emb_dim=64, timestep_emb_type="untrainable_fourier"),
        IdentityCondition(dropout=0.0), optim_params={"lr": 3e-4},
        x_max=+1. * torch.ones((1, act_dim)), x_min=-1. * torch.ones((1, act_dim)), ema_rate=0.9999, device=device)
    cd.prepare_distillation(edm_actor, distillation_N=18)
    CosineAnnealingLR(cd.optimizer, T_max=10)
    cd.train()
    for n, batch in enumerate(loop_dataloader(dataloader)):
        loss = cd.update(batch["act"].to(device), batch["obs"]["state"].to(device), loss_type="distillation")["loss"]
        assert np.isfinite(loss)
        if n == 5:
            break
    cd.save(save_path + "cd_ckpt_latest.pt")

    # ct_training
    ct = ContinuousConsistencyModel(
        IDQLMlp(obs_dim, act_dim, emb_dim=64, timestep_emb_type="untrainable_fourier",
                timestep_emb_params={"scale": 0.02}),
        IdentityCondition(dropout=0.0), optim_params={"lr": 3e-4}, curriculum_cycle=1000000,
        x_max=+1. * torch.ones((1, act_dim)), x_min=-1. * torch.ones((1, act_dim)), ema_rate=0.9999, device=device)
    ct.train()
    for n, batch in enumerate(loop_dataloader(dataloader)):
        _log = ct.update(batch["act"].to(device), batch["obs"]["state"].to(device))
        assert {"loss", "unweighted_loss"} <= set(_log)
        if n == 5:
            break
    assert ct.cur_logger.Nk == 11 and 0 < ct.cur_logger.curriculum_process < 1

    # inference with IDQL-style resampling: 256 candidates per observation, one step
    normalizer = dataset.get_normalizer()
    raw_obs = np.random.randn(4, obs_dim).astype(np.float32)
    obs = torch.tensor(normalizer.normalize(raw_obs)).repeat_interleave(256, 0)
    for model in (ct, cd, edm_actor):
        model.eval()
        act, log = model.sample(torch.zeros((obs.shape[0], act_dim)), n_samples=obs.shape[0], sample_steps=1,
                                condition_cfg=obs, w_cfg=1.0, use_ema=True)
        assert act.shape == (1024, act_dim) and act.abs().max() <= 1
        q, v = iql_q_target(obs, act), iql_v(obs)
        w = torch.softmax(100.0 * (q - v).view(4, 256), dim=1)
        idx = torch.multinomial(w, 1).squeeze(1)
        assert act.view(4, 256, act_dim)[torch.arange(4), idx].shape == (4, act_dim)


def test_seed_003_minimal_dbc(tmp_path):
    dataset = qlearning_dataset(str(_d4rl_file(tmp_path / "d.hdf5")))
    obs_dim, act_dim = dataset['observations'].shape[-1], dataset['actions'].shape[-1]
    size = len(dataset['observations'])
    nn_diffusion = PearceMlp(act_dim, To=1, emb_dim=64, hidden_dim=256, timestep_emb_type="positional")
    nn_condition = PearceObsCondition(obs_dim, emb_dim=64, flatten=True, dropout=0.0)
    actor = DiscreteDiffusionSDE(
        nn_diffusion, nn_condition, predict_noise=False, optim_params={"lr": 3e-4},
        x_max=+1. * torch.ones((1, act_dim)), x_min=-1. * torch.ones((1, act_dim)),
        diffusion_steps=5, ema_rate=0.9999, device=device)
    actor.train()
    avg_loss = 0.
    for t in range(10):
        idx = np.random.randint(0, size, (32,))
        obs = torch.tensor(dataset['observations'][idx], device=device).float()
        act = torch.tensor(dataset['actions'][idx], device=device).float()
        avg_loss += actor.update(act, obs)["loss"]
    actor.save(str(tmp_path) + "/diffusion.pt")
    actor.load(str(tmp_path) + "/diffusion.pt")
    actor.eval()
    prior = torch.zeros((50, act_dim), device=device)
    obs = np.random.randn(50, obs_dim)
    act, log = actor.sample(prior, solver="ddpm", n_samples=50, sample_steps=5, temperature=0.5, w_cfg=1.0,
                            condition_cfg=torch.tensor(obs, device=device, dtype=torch.float32))
    assert act.shape == (50, act_dim) and act.abs().max() <= 1
