import json

import pytest

from rlpost.compare import build_results, runner
from rlpost.compare.resolve import resolve_suite
from rlpost.compare.suite import SuiteError, load_suite
from tests.compare.conftest import FakeLauncher, write_suite


def _suite(tmp_path, **kw):
    return resolve_suite(load_suite(write_suite(tmp_path, **kw)))


def test_runs_are_interleaved_by_seed(tmp_path, fake_launcher):
    suite = _suite(tmp_path, seeds=(3, 1))
    runner.execute(suite, launcher=fake_launcher, log=lambda s: None)
    assert fake_launcher.calls == [("grpo", 3), ("grpo-lr", 3), ("grpo", 1), ("grpo-lr", 1)]


def test_resume_skips_finished_runs_and_reruns_a_crashed_one(tmp_path):
    suite = _suite(tmp_path)
    first = FakeLauncher(fail={("grpo-lr", 0)})
    runs, failed = runner.execute(suite, launcher=first, log=lambda s: None)
    assert [r.label for r in failed] == ["grpo-lr seed 0"]
    assert len(first.calls) == 4  # a crash does not stop the other runs
    crashed = suite.output_dir / "runs" / "grpo-lr" / "seed0"
    assert json.loads((crashed / "run.json").read_text())["status"] == "failed"

    second = FakeLauncher()
    logs = []
    runs, failed = runner.execute(suite, launcher=second, log=logs.append)
    assert second.calls == [("grpo-lr", 0)] and not failed
    assert sum("finished earlier, skipped" in line for line in logs) == 3
    assert all(runner.is_done(r) for r in runs)

    third = FakeLauncher()
    runner.execute(suite, launcher=third, log=lambda s: None)
    assert third.calls == []  # everything finished: nothing reruns


def test_a_run_left_without_summary_is_rerun_from_a_clean_directory(tmp_path, fake_launcher):
    suite = _suite(tmp_path)
    runner.execute(suite, launcher=fake_launcher, log=lambda s: None)
    killed = suite.output_dir / "runs" / "grpo" / "seed1"
    (killed / "summary.json").unlink()  # e.g. the machine rebooted mid-run
    (killed / "stale.txt").write_text("partial output")
    again = FakeLauncher()
    runner.execute(suite, launcher=again, log=lambda s: None)
    assert again.calls == [("grpo", 1)] and not (killed / "stale.txt").exists()


def test_a_changed_entry_config_reruns_its_runs(tmp_path, fake_launcher):
    runner.execute(_suite(tmp_path), launcher=fake_launcher, log=lambda s: None)
    path = tmp_path / "suite.yaml"
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 0.002"))
    again = FakeLauncher()
    runner.execute(resolve_suite(load_suite(path)), launcher=again, log=lambda s: None)
    assert again.calls == [("grpo-lr", 0), ("grpo-lr", 1)]


def test_commands_train_each_entry_with_its_seed_and_directory(tmp_path):
    suite = _suite(tmp_path)
    configs = runner.write_run_configs(suite)
    run = runner.plan_runs(suite)[1]
    cmd = runner.command(run, configs["grpo-lr"])
    assert cmd[1:5] == ["-m", "rlpost.cli", "fit", "--config"]
    assert ["--seed_everything", "0"] == cmd[6:8] and str(run.dir) in cmd
    written = (suite.output_dir / "configs" / "grpo-lr.yaml").read_text()
    assert "max_steps: 2" in written and "num_generations: 2" in written
    assert "--threads" not in cmd and runner.command(run, configs["grpo-lr"], threads=1)[-2:] == ["--threads", "1"]


def test_budget_mismatch_after_a_run_is_reported(tmp_path, capsys):
    suite = _suite(tmp_path)
    launcher = FakeLauncher(completions={"grpo-lr": 12})  # generated more than the plan said
    runs, _ = runner.execute(suite, launcher=launcher, log=lambda s: None)
    results = build_results(suite, runs)
    bad = [r for r in results["runs"] if not r["budget"]["ok"]]
    assert {(r["entry"], r["seed"]) for r in bad} == {("grpo-lr", 0), ("grpo-lr", 1)}
    assert bad[0]["budget"]["problems"] == ["completions_generated: used 12, budget 8"]
    assert results["aggregate"]["grpo-lr"]["budget_ok"] is False


def test_main_exits_nonzero_naming_failed_runs(tmp_path, monkeypatch, capsys):
    from rlpost.compare import main

    monkeypatch.setattr(runner, "launch", FakeLauncher(fail={("grpo", 1)}))
    with pytest.raises(SystemExit) as exit_info:
        main([str(write_suite(tmp_path))])
    assert exit_info.value.code == 1
    assert "1 of 4 runs failed (grpo seed 1)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.md").exists()


def test_full_cycle_with_a_fake_launcher_writes_every_output(tmp_path, monkeypatch, capsys):
    from rlpost.compare import main

    monkeypatch.setattr(runner, "launch", FakeLauncher())
    main([str(write_suite(tmp_path))])
    out = tmp_path / "out"
    for name in ("results.json", "report.md", "reward_vs_step.png", "accuracy_vs_wall_time.png", "memory.png",
                 "phases.png"):
        assert (out / name).stat().st_size > 0, name
    # and again from the finished runs alone
    (out / "report.md").unlink()
    main([str(tmp_path / "suite.yaml"), "--report-only"])
    assert (out / "report.md").exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_runner_writes_and_deletes_nothing_outside_output_dir(tmp_path, fake_launcher, how):
    """An entry name that escapes output_dir (set after the suite file's own check), or a run directory that is a
    symbolic link out of it, is refused before anything is written or deleted: a directory next to output_dir,
    which a retry used to rmtree, survives."""
    suite = _suite(tmp_path)  # output_dir is tmp_path/out
    victim = tmp_path / "victim"
    (victim / "seed0").mkdir(parents=True)
    if how == "symlink":
        (suite.output_dir / "runs").mkdir(parents=True)
        (suite.output_dir / "runs" / "grpo").symlink_to(victim)  # runs/grpo/seed0 -> tmp_path/victim/seed0
    else:
        suite.entries[0].name = "../../victim" if how == "dotdot" else str(victim)  # runs/<name>/seed0 -> victim/seed0
    (victim / "seed0" / "precious.txt").write_text("not the suite's")
    with pytest.raises(SuiteError, match=r"refusing to write or delete .*victim.* outside the suite's output_dir"):
        runner.execute(suite, launcher=fake_launcher, log=lambda s: None)
    assert (victim / "seed0" / "precious.txt").read_text() == "not the suite's"
    assert fake_launcher.calls == []
    outside = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "out"))
    assert outside == ["suite.yaml", "tiny_grpo.yaml", "victim", "victim/seed0", "victim/seed0/precious.txt"]
