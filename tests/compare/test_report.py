import copy
import json

import pytest

from rlpost.compare import build_results, runner, write_outputs
from rlpost.compare.report import aggregate, render
from rlpost.compare.schema import RESULTS_SCHEMA, SchemaError, validate
from rlpost.compare.resolve import resolve_suite
from rlpost.compare.suite import load_suite
from tests.compare.conftest import FakeLauncher, write_suite


@pytest.fixture
def results(tmp_path):
    suite = resolve_suite(load_suite(write_suite(tmp_path, seeds=(0, 1, 2))))
    runs, failed = runner.execute(suite, launcher=FakeLauncher(), log=lambda s: None)
    assert not failed
    return build_results(suite, runs)


def test_results_validate_against_the_schema_and_survive_json(results):
    validate(results)
    validate(json.loads(json.dumps(results, default=str)))
    assert results["suite"]["budget"]["completions"] == 8
    assert len(results["runs"]) == 6 and all(len(r["history"]) == 2 for r in results["runs"])


@pytest.mark.parametrize(
    "mutate, path",
    [
        (lambda r: r["runs"][0]["summary"].pop("peak_memory_bytes"), r"\$\.runs\[0\]\.summary: missing required key 'peak_memory_bytes'"),
        (lambda r: r["runs"][1]["summary"].update(steps="2"), r"\$\.runs\[1\]\.summary\.steps: expected integer"),
        (lambda r: r["runs"][0].update(kind="other"), r"\$\.runs\[0\]\.kind: 'other' is not one of"),
        (lambda r: r["runs"][0].update(history=[]), r"\$\.runs\[0\]\.history: 0 items < minItems 1"),
        (lambda r: r["aggregate"]["grpo"]["accuracy_gain"].update(n=-1), r"\$\.aggregate\.grpo\.accuracy_gain\.n: -1 < minimum 0"),
        (lambda r: r.pop("suite"), r"\$: missing required key 'suite'"),
    ],
    ids=["missing-field", "wrong-type", "bad-enum", "empty-curve", "negative-count", "no-suite"],
)
def test_schema_violations_are_caught_with_their_path(results, mutate, path):
    broken = copy.deepcopy(results)
    mutate(broken)
    with pytest.raises(SchemaError, match=path):
        validate(broken)


def test_schema_is_a_json_schema_document():
    assert RESULTS_SCHEMA["$schema"].startswith("https://json-schema.org/")
    json.dumps(RESULTS_SCHEMA)


def test_aggregate_means_intervals_and_same_seed_ratios(results):
    agg = aggregate(results)
    g, lr = agg["grpo"], agg["grpo-lr"]
    # fake accuracy_after = 0.6 + 0.05 * seed: [0.60, 0.65, 0.70], sd 0.05, t(0.975, 2) * 0.05 / sqrt(3) = 0.12421
    assert g["accuracy_after"]["mean"] == pytest.approx(0.65)
    assert g["accuracy_after"]["ci95"] == pytest.approx(0.12421, abs=1e-5)
    assert g["accuracy_gain"]["mean"] == pytest.approx(0.15)
    # the fake grpo-lr runs are twice as slow on every seed: ratio exactly 2 and 0.5, zero spread
    assert lr["ratio_seconds_per_step"]["mean"] == pytest.approx(2.0) and lr["ratio_seconds_per_step"]["ci95"] == 0
    assert lr["ratio_tokens_per_s"]["mean"] == pytest.approx(0.5)
    assert (lr["ratio_pairs"], lr["ratio_pairs_back_to_back"]) == (3, 3)
    # reward AUC of rewards 0.4 + 0.01 seed, 0.5 + 0.01 seed over steps 1..2: 0.45 + 0.01 seed
    assert g["reward_auc"]["mean"] == pytest.approx(0.46)
    assert g["completions_generated"] == [8] and g["optimizer_steps"] == [2] and g["budget_ok"]


def test_report_has_the_table_ratios_budget_and_verdict(results, tmp_path):
    paths = write_outputs(results, tmp_path / "report", "rlpost compare suite.yaml")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| entry | algorithm | accuracy after | accuracy gain | reward AUC | peak memory (MiB)" in text
    assert "| grpo | GRPO | 0.650 ± 0.124 | +0.150 ± 0.124 |" in text
    assert "| 2.00 ± 0.00× |" in text and "1 (baseline)" in text
    assert "Equal budgets, checked on every run's summary: each of the 6 runs took 2 optimizer steps on 8" in text
    assert "grpo-lr vs grpo (same-seed pairs, 3/3 back to back): 2.00 ± 0.00× the seconds per step" in text
    assert "policy 3.8+3.8+7.6" in text  # model state breakdown in MiB
    assert all(p.stat().st_size > 1000 for p in paths if p.suffix == ".png")


def test_phases_per_step_are_aggregated_tabled_and_plotted(results, tmp_path):
    agg = aggregate(results)
    # fake phases over 2 steps: generation 0.75 s/step x speed (grpo 1, grpo-lr 2), scoring 0.25, forward/backward 0.5
    assert list(agg["grpo"]["phase_s_per_step"]) == ["generation", "scoring", "forward", "backward"]  # a step's order
    assert agg["grpo"]["phase_s_per_step"]["generation"]["mean"] == pytest.approx(0.75)
    assert agg["grpo-lr"]["phase_s_per_step"]["backward"]["mean"] == pytest.approx(1.0)
    paths = write_outputs(results, tmp_path / "report", "rlpost compare suite.yaml")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| entry | generation | scoring | forward | backward | sum |" in text
    assert "| grpo | 750.0 | 250.0 | 500.0 | 500.0 | 2000.0 |" in text and "| grpo-lr | 1500.0 | 500.0 |" in text
    assert (tmp_path / "report" / "phases.png").stat().st_size > 1000 and tmp_path / "report" / "phases.png" in paths


def test_verdict_names_unequal_budgets(results):
    results["runs"][0]["budget"].update(ok=False, problems=["completions_generated: used 12, budget 8"])
    text = render(results, aggregate(results), [], "rlpost compare x")
    assert "**Budgets differ**: grpo seed 0 (completions_generated: used 12, budget 8)" in text


def test_reward_bands_stay_in_the_rewards_range_and_one_seed_draws_none(results, tmp_path, monkeypatch):
    import matplotlib.axes

    from rlpost.compare import plots

    bands, labels = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append((lo, hi)))
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: (labels.append(kw.get("label")), real_plot(self, *a, **kw))[1])
    results = copy.deepcopy(results)
    for r in results["runs"]:  # rewards in [0, 1] that disagree across seeds: 3 seeds' 95% interval overshoots 1
        for h, v in zip(r["history"], {0: [1.0, 1.0], 1: [1.0, 0.9], 2: [0.0, 0.2]}[r["seed"]]):
            h["train/reward"] = v
    lo, hi = plots.metric_range(results, "train/reward")
    assert (lo, hi) == (0.0, 1.0)
    plots.reward_vs_step(results, tmp_path / "r.png")
    assert bands and all(min(b[0]) >= lo and max(b[1]) <= hi for b in bands)
    assert any(max(b[1]) == hi for b in bands)  # the interval reached past the range and was clipped
    one_seed = copy.deepcopy(results)
    one_seed["runs"] = [r for r in one_seed["runs"] if r["seed"] == one_seed["runs"][0]["seed"]]
    bands.clear(), labels.clear()
    plots.reward_vs_step(one_seed, tmp_path / "r1.png")
    assert not bands and labels and all("n = 1: no band" in label for label in labels)
