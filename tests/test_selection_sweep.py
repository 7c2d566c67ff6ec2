"""experiments/selection_sweep.py re-scores trained IDQL runs at other selection settings: each setting is applied
to the agent only while it is scored, and the table is the mean ± SE over runs."""
from types import SimpleNamespace

import pytest
from conftest import experiment_module


@pytest.fixture(scope="module")
def sweep():
    return experiment_module("selection_sweep")


def test_each_setting_is_applied_while_scored_and_put_back(sweep):
    agent = SimpleNamespace(selection="softmax", weight_temperature=50.0, num_candidates=256)
    seen = []
    record = lambda a: seen.append((a.selection, a.weight_temperature, a.num_candidates)) or 1.0  # noqa: E731
    for _, attributes in sweep.settings([50, 3], greedy=True, alone=True, expectile=True):
        sweep.score_setting(agent, attributes, record)
        assert (agent.selection, agent.weight_temperature, agent.num_candidates) == ("softmax", 50.0, 256)
    assert seen == [("softmax", 50.0, 256), ("softmax", 3.0, 256), ("greedy", 50.0, 256), ("expectile", 50.0, 256),
                    ("softmax", 50.0, 1)]

    def fail(a):
        raise RuntimeError("episode crashed")
    with pytest.raises(RuntimeError):
        sweep.score_setting(agent, {"weight_temperature": 3.0}, fail)
    assert agent.weight_temperature == 50.0  # put back even when scoring fails


def test_rows_are_mean_and_standard_error_over_runs_and_mark_the_runs_own_setting(sweep):
    scores = {("a", 50.0): 20.0, ("b", 50.0): 30.0, ("c", 50.0): 40.0, ("a", 3.0): 80.0, ("b", 3.0): 80.0,
              ("c", 3.0): 80.0}
    rows = sweep.sweep(["a", "b", "c"], sweep.settings([50, 3], greedy=False, alone=False),
                       lambda run, label, attrs: scores[(run, attrs["weight_temperature"])])
    assert [(r["mean"], round(r["se"], 4)) for r in rows] == [(30.0, 5.7735), (80.0, 0.0)]
    table = sweep.format_rows(rows, 50.0, ["a", "b", "c"])
    assert "| softmax, w = 50 (the runs' own) | 30.0 ± 5.8 | 20.0 | 30.0 | 40.0 |" in table
    assert "| softmax, w = 3 | 80.0 ± 0.0 | 80.0 | 80.0 | 80.0 |" in table


def test_the_runs_own_setting_is_read_from_its_report_not_scored_again(sweep, tmp_path):
    import json
    (tmp_path / "report.json").write_text(json.dumps({"rows": [
        {"sample_steps": 5, "episodes": 10, "score_mean": 42.0},
        {"sample_steps": 2, "episodes": 10, "score_mean": 7.0}]}))
    agent = SimpleNamespace(selection="softmax", weight_temperature=50.0, num_candidates=256, sample_steps=5)
    run = SimpleNamespace(agent=agent, cfg=SimpleNamespace(eval=SimpleNamespace(seeds=[0])),
                          path=tmp_path / "checkpoints" / "latest.ckpt")
    own, other, alone = (a for _, a in sweep.settings([50, 3], greedy=False, alone=True))
    assert sweep.reported_score(run, own, episodes=10) == 42.0
    assert sweep.reported_score(run, own, episodes=20) is None  # another evaluation: scored again
    assert sweep.reported_score(run, other, episodes=10) is None
    assert sweep.reported_score(run, alone, episodes=10) is None
    assert sweep.reported_score(run, own, episodes=10, sample_steps=2) == 7.0  # --sample-steps 2: that row


def test_a_score_is_reused_only_under_the_same_evaluation(sweep, tmp_path):
    import json
    key = {"episodes": 10, "eval_seeds": [0], "step": 20000}
    (tmp_path / "score.json").write_text(json.dumps({**key, "row": {"score_mean": 61.0}}))
    assert sweep.cached_row(tmp_path / "score.json", key) == {"score_mean": 61.0}
    assert sweep.cached_row(tmp_path / "score.json", {**key, "episodes": 20}) is None
    assert sweep.cached_row(tmp_path / "score.json", {**key, "step": 30000}) is None  # the run trained on
    assert sweep.cached_row(tmp_path / "missing.json", key) is None


def test_dql_and_edp_runs_are_swept_by_temperature_and_alone_only(sweep):
    agent = SimpleNamespace(weight_temperature=1.0, num_candidates=50)  # a DQL agent has no `selection`
    seen = []
    dql_settings = sweep.settings([1, 0.1], greedy=False, alone=True, algo="dql")
    for _, attributes in dql_settings:
        sweep.score_setting(agent, attributes, lambda a: seen.append((a.weight_temperature, a.num_candidates)))
    assert seen == [(1.0, 50), (0.1, 50), (1.0, 1)] and not hasattr(agent, "selection")
    rows = [{"setting": label, "attributes": attrs, "scores": [5.0], "mean": 5.0, "se": 0.0}
            for label, attrs in dql_settings]
    table = sweep.format_rows(rows, 1.0, ["dql-seed1"])
    assert "| softmax, w = 1 (the runs' own) |" in table
    assert "| the actor alone (1 candidate) | 5.0 ± 0.0 |" in table and "w = 0.1 (the runs' own)" not in table
    for greedy, expectile in ((True, False), (False, True)):
        with pytest.raises(ValueError, match="greedy and expectile selection are IDQL's"):
            sweep.settings([1], greedy=greedy, alone=False, expectile=expectile, algo="edp")
