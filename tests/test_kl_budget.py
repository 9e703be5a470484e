"""A KL budget on any updater (``vla_cl.updaters.budget``): PPO's adaptive-KL rule by hand, budgeted SFT and PPO
keeping the probe's KL within B where the unbudgeted runs go over it, the early stop, exact resume of a budgeted
run, the trace in TensorBoard, and bad budgets refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.updater_toy import TASK, register_toy, toy_demos
from vla_cl.cli import main as cli
from vla_cl.updaters.budget import INITIAL_COEF, MIN_COEF, KLBudget

BUDGET = 0.05  # nats per action: the toy's SFT at lr 3e-3 passes it in iteration 3, PPO in iteration 4
BASE = ["task=" + TASK, "policy_preset=tiny", "num_envs=2", "eval_episodes=2", "probe_episodes=1", "progress=false",
        "iterations=6", "eval_every=3", "updater.optim.lr=3e-3"]


@pytest.fixture(scope="module", autouse=True)
def toy_task():
    register_toy()


@pytest.fixture(scope="module")
def demos_dir(tmp_path_factory):
    return toy_demos(tmp_path_factory.mktemp("demos"), n_episodes=6, obs_mode="both", image_size=32)


def args(name: str, out: Path, demos: Path, *extra: str) -> list[str]:
    data = [f"demos={demos}", "updater.batch_size=16"] if name == "sft" else ["updater.episodes=4"]
    return ["train", f"updater={name}", *BASE, *data, f"out_dir={out}", *extra]


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_adaptive_rule_by_hand():
    budget = KLBudget(0.9, "adaptive", kl_coef=0.0)  # target d_targ = 0.6, band 0.4 .. 0.9
    assert budget.coef == INITIAL_COEF and budget.target == pytest.approx(0.6)
    assert budget.judge(0.1) == {"kl/budget": 0.9, "kl/coef": 1.0, "kl/lr_scale": 1.0, "kl/proposed": 0.1,
                                 "kl/rejected": 0.0}
    assert budget.coef == 0.5 and budget.lr_scale == 1.0  # far under the target: beta halved, lr stays whole
    budget.judge(0.5)
    assert budget.coef == 0.5  # inside the band: kept
    assert budget.judge(0.95)["kl/rejected"] == 1.0 and budget.coef == 1.0  # over the budget: undone, doubled
    assert budget.lr_scale == 0.5  # and the next steps are shorter
    assert budget.judge(float("nan"))["kl/rejected"] == 1.0  # a NaN is over any budget
    assert budget.judge(0.5)["kl/lr_scale"] == 0.25 and budget.lr_scale == 0.25  # in the band: kept
    for _ in range(30):
        budget.judge(0.0)
    assert budget.coef == MIN_COEF and budget.lr_scale == 1.0
    assert KLBudget(0.9, "adaptive", kl_coef=0.2).coef == 0.2  # the updater's own weight is the start
    stop = KLBudget(0.9, "stop", kl_coef=0.0)
    stop.judge(0.5)
    assert not stop.stopped and stop.coef == 0.0
    assert stop.judge(1.0)["kl/rejected"] == 1.0 and stop.stopped and stop.lr_scale == 1.0


@pytest.mark.parametrize("name", ["sft", "ppo"])
def test_a_budgeted_run_stays_within_its_budget_where_the_free_one_goes_over(name, tmp_path, demos_dir):
    assert cli(args(name, tmp_path / "free", demos_dir)) == 0
    free = [line["kl/mean"] for line in lines(tmp_path / "free")]
    assert max(free) > 2 * BUDGET  # without a budget the same run goes well over it

    out = tmp_path / "budgeted"
    assert cli(args(name, out, demos_dir, f"kl_budget={BUDGET}")) == 0
    trace = lines(out)[1:]
    assert len(trace) == 6 and all(line["kl/mean"] <= BUDGET for line in trace)
    assert all(line["kl/budget"] == BUDGET and line["kl/coef"] > 0 for line in trace)
    rejected = [line for line in trace if line["kl/rejected"]]
    assert all(line["kl/proposed"] > BUDGET for line in rejected)
    assert all(line["kl/proposed"] == line["kl/mean"] for line in trace if not line["kl/rejected"])
    summary = json.loads((out / "summary.json").read_text())["kl_budget"]
    assert summary["max_kl"] <= BUDGET and summary["rejected"] == len(rejected) and summary["stopped_at"] is None
    assert max(line["kl/mean"] for line in trace) > 0.2 * BUDGET  # it learnt something, not a frozen policy

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "artifacts" / "tb"))
    events.Reload()
    assert {"kl/coef", "kl/budget", "kl/rejected", "kl/mean"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("kl/coef")] == pytest.approx([line["kl/coef"] for line in trace])


def test_the_early_stop_ends_the_run_with_the_last_policy_in_budget(tmp_path, demos_dir):
    out = tmp_path / "stop"
    assert cli(args("sft", out, demos_dir, f"kl_budget={BUDGET}", "kl_control=stop")) == 0
    trace = lines(out)
    stopped = json.loads((out / "summary.json").read_text())["kl_budget"]["stopped_at"]
    assert stopped is not None and stopped < 6 and trace[-1]["iteration"] == stopped
    assert trace[-1]["kl/rejected"] == 1.0 and trace[-1]["kl/proposed"] > BUDGET >= trace[-1]["kl/mean"]
    assert trace[-1]["kl/mean"] == trace[-2]["kl/mean"]  # the undone update: the previous iteration's policy
    assert "eval/success_rate" in trace[-1]  # the run's last policy is evaluated
    assert all(line["kl/coef"] == 0.0 for line in trace[1:])  # the stop control leaves SFT's objective alone
    assert cli(args("sft", out, demos_dir, f"kl_budget={BUDGET}", "kl_control=stop")) == 0  # run again: done
    assert lines(out) == trace


def test_a_budgeted_run_resumes_with_its_coefficient(tmp_path, demos_dir, monkeypatch):
    from vla_cl.updaters import loop

    extra = (f"kl_budget={BUDGET}", "checkpoint_every=1", "refresh_every=1")
    assert cli(args("sft", tmp_path / "whole", demos_dir, *extra)) == 0
    real, calls = loop.optimise, []

    class Crash(Exception):
        pass

    def crash_in_the_fifth(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise Crash
        return real(*a, **k)

    monkeypatch.setattr(loop, "optimise", crash_in_the_fifth)
    out = tmp_path / "crashed"
    assert cli(args("sft", out, demos_dir, *extra)) == 1  # a crash: traceback, exit 1
    monkeypatch.undo()
    assert cli(args("sft", out, demos_dir, *extra)) == 0
    wall = ("time", "seconds", "samples_per_s")
    strip = lambda trace: [{k: v for k, v in line.items() if k not in wall} for line in trace]
    assert strip(lines(out)) == strip(lines(tmp_path / "whole"))
    assert any(line.get("kl/rejected") for line in lines(out)[4:])  # the resumed part had a rejection to repeat


@pytest.mark.parametrize("value", ["0", "-0.5", "inf", "nan", "true"])
def test_a_budget_that_is_not_a_positive_finite_number_is_refused_before_any_work(value, tmp_path, capsys,
                                                                                  demos_dir):
    out = tmp_path / "run"
    assert cli(args("sft", out, demos_dir, f"kl_budget={value}")) == 2
    err = capsys.readouterr().err
    assert "kl_budget" in err and "Traceback" not in err
    assert "finite number" in err or "not a float" in err
    assert not (out / "metrics.jsonl").exists()


def test_an_unknown_kl_control_is_refused(tmp_path, capsys, demos_dir):
    assert cli(args("sft", tmp_path / "run", demos_dir, "kl_control=sometimes")) == 2
    assert "kl_control" in capsys.readouterr().err
