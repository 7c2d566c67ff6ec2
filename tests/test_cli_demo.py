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
