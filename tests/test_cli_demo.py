"""The README's main job (`cleandiffuser demo`) runs end to end and writes what it promises."""
import json

from cleandiffuser.cli import main


def test_demo_writes_plot_report_and_loadable_checkpoints(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "60"]) == 0
    printed = capsys.readouterr().out
    assert "sliced W1" in printed and "samples.png" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["EDM Euler", "EDM Euler", "CD", "CD", "CT", "CT"]
    assert [r["nfe"] for r in report["rows"]] == [20, 1, 1, 2, 1, 2]
    assert (tmp_path / "samples.png").stat().st_size > 1000
    from cleandiffuser.diffusion import load_model
    for name in ("edm", "cd", "ct"):
        assert load_model(tmp_path / f"{name}.ckpt").step > 0


def test_openmp_wait_policy_spins_only_on_idle_cores():
    from cleandiffuser.cli import _other_runnable, choose_openmp_wait
    env = {}
    assert choose_openmp_wait(env, runnable=[0, 0, 1, 0, 0]) == "spin"
    assert env == {"GOMP_SPINCOUNT": "20000"}
    env = {}
    assert choose_openmp_wait(env, runnable=[1, 2, 0, 1, 1]) == "passive"  # another job keeps a core busy
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    assert choose_openmp_wait(env, runnable=[]) == "passive"  # cannot tell (no /proc): the safe choice
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert choose_openmp_wait(env, runnable=[0] * 5) == "user" and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {"GOMP_SPINCOUNT": "100"}
    assert choose_openmp_wait(env, runnable=[3] * 5) == "user" and env == {"GOMP_SPINCOUNT": "100"}
    # the probe subtracts the calling process itself from the kernel's runnable count
    assert _other_runnable(samples=3, interval=0, read=iter([1, 3, 2]).__next__) == [0, 2, 1]
    assert _other_runnable(samples=3, interval=0, read=lambda: None) == []
