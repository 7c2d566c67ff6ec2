import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny networks run fastest on one thread, and a second thread only spins when the machine is busy.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


def experiment_module(name: str):
    """experiments/<name>.py imported as a module (the experiments folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def load_experiment(tmp_path, monkeypatch):
    """load_experiment(name) -> experiments/<name>.py as a module whose ROOT is tmp_path (with a results/ folder)
    and whose RECORDS is tmp_path/results/records, so a queue's runs and tables stay in the test's folder."""
    def load(name: str):
        module = experiment_module(name)
        monkeypatch.setattr(module, "ROOT", tmp_path)
        monkeypatch.setattr(module, "RECORDS", tmp_path / "results" / "records")
        (tmp_path / "results").mkdir(exist_ok=True)
        return module
    return load
