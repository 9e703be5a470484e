"""The main job: its config's refusals, the law's arithmetic, and every stage end to end (preset=smoke),
down to the report opening in a headless browser with every image and video loaded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vla_cl.cli import main
from vla_cl.evaluation.results import CellResult, SuiteResult
from vla_cl.razor import law as L
from vla_cl.razor.config import RazorConfig

REPO = Path(__file__).resolve().parent.parent
RETAIN = ["maniskill/PushCube-v1", "maniskill/PullCube-v1"]
NEW = "maniskill/PickCubeLowGoal-v2"


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("override, field", [
    (["suite=smoke", "prior_tasks=[maniskill/PushCube-v1,maniskill/PullCube-v1,maniskill/PickCubeLowGoal-v2]",
      "init_from=maniskill/PushCube-v1"], "new_task"),
    (["ppo_lrs=[]", "reinforce_lrs=[]"], "ppo_lrs/reinforce_lrs"),
    (["sft_lrs=[]"], "sft_lrs"),
    (["kl_budgets=[0.5,0]"], "kl_budgets"),
    (["kl_budgets=[.inf]"], "kl_budgets"),
    (["rl_iterations=2"], "rl_iterations"),
    (["rl_episodes=0"], "rl_episodes"),
    (["init_from=maniskill/PickCube-v1"], "suite"),  # the task the new one starts from cannot be retained
    (["preset=openvla_tiny", "init_from=simpler/widowx_carrot_on_plate"], "init_from"),  # no word vocabulary
    (["preset=openvla_tiny", "policy_preset=default"], "init"),  # an OpenVLA needs its checkpoint
    (["preset=openvla_tiny", "rl_overrides={updater: {not_an_option: 1}}"], "rl_overrides"),
    (["preset=openvla_tiny", "sft_overrides={demos: elsewhere}"], "sft_overrides"),
])
def test_a_design_that_cannot_run_is_refused_before_any_work(override, field, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["razor", *override, f"out_dir={out}"]) == 2
    assert f"invalid value for {field}" in capsys.readouterr().err
    assert not (out / "info").exists()  # nothing ran


def test_the_openvla_preset_without_its_checkpoint_or_a_gpu_fails_at_once_naming_the_alternative(tmp_path, capsys,
                                                                                                  monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["razor", "preset=openvla", f"out_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert "openvla/openvla-7b" in err and "local" in err and "folder" in err
    # a local checkpoint, but no GPU on this machine: refused when the run starts, before any stage
    from vla_cl.policies.openvla import OpenVLAPolicy

    folder = OpenVLAPolicy.tiny().save_pretrained(tmp_path / "base")
    if not torch.cuda.is_available():
        assert main(["razor", "preset=openvla", f"init={folder}", f"out_dir={tmp_path / 'b'}"]) == 2
        err = capsys.readouterr().err
        assert "no usable CUDA GPU" in err and "preset=openvla_tiny" in err
        assert not (tmp_path / "b" / "info").exists()
    assert time.perf_counter() - start < 10


def test_the_bridge_presets_compose_into_the_experiment_their_files_describe(tmp_path):
    from vla_cl.cli.compose import compose
    from vla_cl.policies.openvla import OpenVLAPolicy
    from vla_cl.razor import budget

    local = OpenVLAPolicy.tiny().save_pretrained(tmp_path / "openvla")  # stands in for a local openvla-7b folder
    gpu = compose("razor", RazorConfig, ["preset=openvla", f"init={local}"])
    assert gpu.policy == "openvla" and gpu.device == "cuda" and gpu.new_task == "simpler/widowx_put_eggplant_in_basket"
    assert gpu.label_sigma == 0.0 and gpu.camera_size is None and gpu.experiment_suite().episodes >= 50
    assert next(t for t in gpu.trials() if t.method == "ppo").train["updater"]["optim"]["minibatches"] == 960
    assert {t.method for t in gpu.trials()} == {"ppo", "reinforce", "sft", "sft_kl"}
    stages = {row["stage"]: row for row in budget.summary(gpu)["stages"]}
    assert stages["sweep"]["policy_hours"] > 0 and stages["evaluation"]["env_steps"] > stages["pi0_eval"]["env_steps"]
    vision = compose("razor", RazorConfig, ["preset=vision"])
    assert vision.policy == "small_vlm" and vision.camera_size == 160 and vision.label_sigma == 0.0
    assert {"camera_size": 160} == vision.experiment_suite().tasks[0].options
    assert next(t for t in vision.trials() if t.method == "ppo").train["updater"]["optim"]["update_epochs"] == 1
    assert vision.pretrain_config(None).tasks[-1] == vision.new_task  # the new task's warm-up demonstrations
    assert vision.pretrain_config(None).demos_of(vision.new_task) == vision.new_task_warmup == 10
    assert RazorConfig().label_sigma == 2.0  # the state default keeps its soft labels


def test_the_plan_counts_the_snapshots_the_sweep_keeps():
    from vla_cl.razor import budget

    # RL: 12 iterations, snapshots at 4 and 8; SFT: 40 iterations, at 13, 26 and 39 (the README's 20 in all)
    assert budget.snapshot_count(12) == 2 and budget.snapshot_count(40) == 3 and budget.snapshot_count(1) == 0
    evaluation = next(r for r in budget.plan(RazorConfig()) if r.stage == "evaluation")
    assert "8 final policies" in evaluation.what and "20 snapshots" in evaluation.what


def test_a_suite_holding_the_new_task_is_refused(tmp_path):
    suite = tmp_path / "with_new.yaml"
    suite.write_text(f"tasks: [maniskill/PushCube-v1, {NEW}]\nepisodes: 2\n")
    with pytest.raises(ValueError, match="retention suite without the new task"):
        RazorConfig(suite=str(suite), prior_tasks=["maniskill/PushCube-v1", "maniskill/StackCube-v1"])


def test_the_default_sweep_has_three_ppo_and_three_sft_settings_and_both_hybrids():
    config = RazorConfig()
    methods = [t.method for t in config.trials()]
    assert methods.count("ppo") == 3 and methods.count("sft") == 3 and methods.count("sft_kl") == 1
    assert len({t.id for t in config.trials()}) == len(methods)
    distill = config.distill_trial("/x/policy", "ppo_lr0p001")
    assert distill.method == "distill" and distill.train["teacher"] == "/x/policy"
    assert "reinforce" in [t.method for t in RazorConfig(reinforce_lrs=[1e-3]).trials()]
    budgeted = [t for t in RazorConfig(kl_budgets=[0.5]).trials() if t.family == "budget"]
    assert [(t.method, t.train["kl_budget"]) for t in budgeted] == [("ppo_budget", 0.5), ("sft_budget", 0.5)]
    assert budgeted[0].train["updater"]["optim"]["lr"] == 1e-3 and budgeted[1].train["updater"]["name"] == "sft"


# ------------------------------------------------------------------------------------------ the law


def result(successes: dict[str, list[int]], seeds=None) -> SuiteResult:
    cells = {}
    for task, outcomes in successes.items():
        s = seeds or list(range(len(outcomes)))
        cells[(task, "in_distribution")] = CellResult(task, "in_distribution", s, [bool(x) for x in outcomes],
                                                      [10] * len(outcomes), [0.0] * len(outcomes))
    return SuiteResult({"name": "t"}, "p", cells)


def point(key, family, new, push, pull, pi0, kl=0.0, final=True, seeds=None):
    r = result({NEW: new, RETAIN[0]: push, RETAIN[1]: pull}, seeds)
    return L.make_point(key, family, family, key, 1, final, r, pi0, NEW, RETAIN, {"forward_kl_new": kl})


def test_points_forgetting_pareto_and_the_finding_by_hand():
    pi0_result = result({NEW: [0, 0, 0, 1], RETAIN[0]: [1, 1, 1, 1], RETAIN[1]: [1, 1, 1, 0]})
    pi0 = L.make_point("pi0", "pi0", "pi0", "", 0, True, pi0_result, pi0_result, NEW, RETAIN, {})
    rl = point("rl", "rl", [1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 0, 0], pi0_result, kl=0.5)
    sft = point("sft", "sft", [1, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0], pi0_result, kl=2.0)
    weak = point("weak", "sft", [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], pi0_result, kl=0.1)
    # forgetting: mean over tasks of pi0 - pi. rl: push 0, pull 3/4 - 2/4 = 1/4 -> 1/8
    assert rl.forgetting == pytest.approx(0.125)
    assert sft.forgetting == pytest.approx(((1 - 0.5) + (0.75 - 0.25)) / 2)
    assert weak.forgetting == pytest.approx(0.0) and rl.new_success == 0.75
    assert [p.key for p in L.pareto([rl, sft, weak])] == ["weak", "rl"]  # sft (75 %) is beaten by rl
    assert L.least_forgetting([rl, sft, weak], 0.5).key == "rl"
    found = L.finding([rl, sft, weak], pi0, RETAIN)
    # chosen on episodes 0 and 2: rl and weak reach 50 % there, weak forgets nothing there (sft: 0.75)
    assert found["level"] == 0.5 and found["rl_point"] == "rl" and found["sft_point"] == "weak"
    # measured on episodes 1 and 3: neither forgets; the new task is not matched there (rl 100 %, weak 0 %)
    assert found["sft_minus_rl"]["estimate"] == pytest.approx(0.0)
    assert found["new_task_rl_minus_sft"]["estimate"] == pytest.approx(1.0)
    old = found["same_episodes"]  # chosen and measured on all four episodes
    assert old["level"] == 0.75 and old["rl_point"] == "rl" and old["sft_point"] == "sft"
    assert old["sft_minus_rl"]["estimate"] == pytest.approx(sft.forgetting - rl.forgetting)
    assert L.make_point("x", "ppo", "rl", "lr=0.001_s1", 1, True, pi0_result, pi0_result, NEW, RETAIN, {}).arm == \
        "ppo_lr=0.001"  # replicas of one arm at other training seeds share it
    matched = L.matched([rl, sft, weak], pi0, RETAIN, [0.25, 0.75, 1.0])
    sft_rows = matched["families"]["sft"]
    assert sft_rows[0]["point"] == "pi0" and sft_rows[0]["forgetting"]["estimate"] == 0.0
    assert sft_rows[1]["point"] == "sft" and not sft_rows[2]["reached"]


def test_snapshots_pair_with_finals_on_the_episodes_both_ran():
    pi0_result = result({NEW: [0] * 6, RETAIN[0]: [1] * 6, RETAIN[1]: [1, 1, 1, 1, 1, 0]})
    snapshot = point("snap", "rl", [1, 0], [1, 0], [1, 1], pi0_result, final=False, seeds=[0, 1])
    # only seeds 0 and 1 are shared: pi0 succeeded on both in both tasks
    assert snapshot.forgetting == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError, match="share no example"):
        point("far", "rl", [1], [1], [1], pi0_result, seeds=[99])


def test_r2_of_a_predictor_that_explains_forgetting_exactly():
    pi0_result = result({NEW: [0] * 4, RETAIN[0]: [1] * 4, RETAIN[1]: [1] * 4})
    points = []
    for i, fails in enumerate([0, 1, 2, 3, 4]):
        outcomes = [0] * fails + [1] * (4 - fails)
        p = point(f"p{i}", "rl", [1] * 4, outcomes, outcomes, pi0_result, kl=float(fails))
        p.predictors["tv_new"] = 1.0  # constant: cannot be fitted
        points.append(p)
    table = L.r2_table(points)
    assert table["forward_kl_new"] == pytest.approx(1.0) and table["tv_new"] is None


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`vla-cl razor preset=smoke`, interrupted once in the sweep and started again."""
    out = tmp_path_factory.mktemp("razor") / "run"
    command = [sys.executable, "-m", "vla_cl.cli", "razor", "preset=smoke", f"out_dir={out}", "workers=2"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 600
    while not (out / "sweep").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # well into the sweep
    if first.poll() is None:
        import os

        os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, second.stdout


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The same run uninterrupted, on the plain process pool (``smoke_run`` runs on Ray where it is installed)."""
    out = tmp_path_factory.mktemp("razor_straight") / "run"
    assert main(["razor", "preset=smoke", f"out_dir={out}", "workers=2", "ray.executor=process"]) == 0
    return out


def _numbers(summary: dict) -> dict:
    """What the experiment measured (not how long it took or where it ran)."""
    return {key: summary[key] for key in ("pi0", "runs", "r2", "r2_final_only", "matched", "finding", "design_checks",
                                          "retention_modes")}


@pytest.mark.slow
@pytest.mark.sim
def test_a_killed_run_started_again_ends_with_identical_numbers(smoke_run, uninterrupted_run):
    # and Ray tasks (the killed and resumed run) give the process pool's numbers
    resumed = json.loads((smoke_run[0] / "summary.json").read_text())
    straight = json.loads((uninterrupted_run / "summary.json").read_text())
    assert _numbers(resumed) == _numbers(straight)


@pytest.mark.slow
@pytest.mark.sim
def test_every_stage_runs_and_an_interrupted_run_resumes(smoke_run):
    out, stdout = smoke_run
    assert "stage timings" in stdout and "reused" in stdout  # the stages finished before the kill
    timings = json.loads((out / "timings.json").read_text())
    assert [t["stage"] for t in timings] == ["info", "demos", "pi0", "pi0_eval", "sweep", "evaluation", "greedy",
                                            "law", "report"]
    summary = json.loads((out / "summary.json").read_text())
    methods = {run["method"] for run in summary["runs"]}
    assert methods == {"ppo", "sft", "sft_kl", "distill", "ppo_budget", "sft_budget"}
    # the budgeted arms kept the probe's KL within their budget, and the report places them against RL
    assert {arm["method"] for arm in summary["budgeted"]} == {"ppo_budget", "sft_budget"}
    assert all(arm["max_kl"] <= arm["budget"] == 0.05 for arm in summary["budgeted"])
    for run in summary["runs"]:
        for key in ("method", "setting", "checkpoint_step", "new_task_success", "retention", "forgetting",
                    "forward_kl_new", "reverse_kl_new", "tv_new", "l2_new", "forward_kl_old", "weight_l1",
                    "activation_l2_old", "w1_new", "smooth_kl_new", "mean_action_old", "forward_kl_onpolicy"):
            assert run.get(key) is not None, key
        assert set(run["retention"]) == set(RETAIN)
    # every run has its final policy and at least two mid-training snapshots
    by_trial: dict[str, list] = {}
    for run in summary["runs"]:
        by_trial.setdefault(run["method"] + run["setting"], []).append(run["final"])
    assert all(finals.count(True) == 1 and finals.count(False) >= 2 for finals in by_trial.values())
    assert "forward_kl_new" in summary["r2"] and summary["finding"]["statement"]
    assert summary["finding"]["held"] in (True, False, None)
    # the finding's pair chosen on one half of the episodes and measured on the other, and the trade-off curves
    finding = summary["finding"]
    assert finding["examples"]["selection"] and finding["same_episodes"]["sft_minus_rl"]
    assert finding["tradeoff"]["levels"]
    assert all("weighted" in trust for trust in summary["r2_trust"].values() if trust)
    # every fit beside its noise ceiling, in summary.json and the report's words
    assert summary["noise_ceiling"]["points"] == len(summary["runs"]) and summary["noise_ceiling_final"]
    report = (out / "report.html").read_text()
    assert "noise ceiling" in report and summary["noise_ceiling_words"].startswith("Noise")
    assert "Ordered action bins" in report and "w1_new" in summary["r2"]
    assert "KL-budgeted arms" in report and "RL's retention minus its own" in report
    finals = {run["key"] for run in summary["runs"] if run["final"]}
    assert all(r.get("point") in finals | {"pi0", None} for rows in summary["matched"]["families"].values()
               for r in rows)  # the matched table holds final policies only
    # retention acting greedily beside sampling, per task, for pi0 and every final policy
    modes = summary["retention_modes"]
    assert set(modes["policies"]) == finals and set(modes["pi0"]["greedy"]) == set(RETAIN)
    greedy = json.loads((out / "evaluation_greedy" / "pi0" / "result.json").read_text())
    assert greedy["suite"]["greedy"] is True and {c["axis"] for c in greedy["cells"]} == {"in_distribution"}
    for both in modes["policies"].values():
        assert set(both["greedy"]["forgetting"]) == set(RETAIN) and "mean_forgetting" in both["sampled"]


def test_predict_forgetting_measures_a_sweep_policy_as_the_sweep_did_and_refuses_foreign_input(smoke_run, tmp_path,
                                                                                               capsys):
    out, _ = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    pi0, policy = out / "pi0" / "pi0_for_new_task", out / "sweep" / "ppo_lr0p001" / "artifacts" / "policy"
    base = ["predict-forgetting", f"policy={policy}", f"base={pi0}", f"task={NEW}", f"law={out / 'summary.json'}"]
    assert main([*base, "predictor=w1_new", f"out_dir={tmp_path / 'p'}"]) == 0
    result = json.loads((tmp_path / "p" / "prediction.json").read_text())
    swept = next(r for r in summary["runs"] if r["key"] == "ppo_lr0p001__final")
    assert result["measured"]["value"] == pytest.approx(swept["w1_new"], rel=1e-5)  # the sweep's probe, redrawn
    p = result["prediction"]
    assert p["low"] <= p["forgetting"] <= p["high"] and "predicted forgetting" in capsys.readouterr().out
    # the report's leave-one-run-out table: every predictor with its error and coverage
    assert set(summary["prediction"]) >= {"forward_kl_new", "w1_new"} and summary["prediction"]["forward_kl_new"]
    assert "Predicting forgetting from the new task alone" in (out / "report.html").read_text()

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"r2": {}, "runs": []}))
    for args, field in (([f"law={foreign}"], "law"), ([f"law={tmp_path / 'none.json'}"], "law"),
                        (["task=maniskill/PushCube-v1"], "task"), (["predictor=forward_kl_old"], "predictor"),
                        (["predictor=forward_kl_onpolicy"], "predictor"), ([f"policy={tmp_path}"], "policy")):
        kept = [a for a in base if not a.startswith(args[0].split("=")[0] + "=")]
        assert main([*kept, *args, f"out_dir={tmp_path / 'x'}"]) == 2, args
        assert f"invalid value for {field}" in capsys.readouterr().err
        assert not (tmp_path / "x" / "prediction.json").exists()


def test_a_policy_with_another_action_space_is_refused():
    from types import SimpleNamespace

    import numpy as np

    from vla_cl.razor.predict import check_action_spaces

    def policy(high):
        return SimpleNamespace(action_support=(0, 256), action_values=lambda: np.tile(np.linspace(-1, high, 256), (7, 1)))

    check_action_spaces(policy(1.0), policy(1.0))
    with pytest.raises(ValueError, match="invalid value for policy: its action space"):
        check_action_spaces(policy(2.0), policy(1.0))


@pytest.fixture(scope="module")
def openvla_tiny_run(tmp_path_factory):
    """`vla-cl razor preset=openvla_tiny`: the OpenVLA experiment's every stage, a toy OpenVLA on the CPU."""
    out = tmp_path_factory.mktemp("razor_openvla") / "run"
    command = [sys.executable, "-m", "vla_cl.cli", "razor", "preset=openvla_tiny", f"out_dir={out}", "workers=2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.mark.slow
@pytest.mark.sim
def test_the_openvla_razor_runs_every_stage_on_the_bridge_scenes(openvla_tiny_run):
    import os

    from vla_cl.browser import check_page

    out, stdout = openvla_tiny_run
    timings = json.loads((out / "timings.json").read_text())
    assert [t["stage"] for t in timings] == ["info", "demos", "pi0", "pi0_eval", "sweep", "evaluation", "greedy",
                                            "law", "report"]
    print({t["stage"]: round(t["seconds"], 1) for t in timings})  # shown with -s: the stage timings
    assert "[razor] plan" in stdout and (out / "plan.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert {run["method"] for run in summary["runs"]} == {"ppo", "sft", "sft_kl", "distill"}
    assert set(summary["retention_tasks"]) == {"simpler/widowx_carrot_on_plate", "simpler/widowx_stack_cube"}
    assert "toy size" in summary["setting"]["policy"] and "64 px wide" in summary["setting"]["camera"]
    assert "1 demonstrations of the new task" in summary["setting"]["warmup"]
    assert any("stand-in table" in m for m in summary["setting"]["stand_ins"])
    for run in summary["runs"]:
        assert all(run[k] == run[k] for k in ("forward_kl_new", "weight_fisher_l2", "activation_l2_old"))  # finite
    # every fine-tuned policy names the merged warm-up as its base: pi0 is its model with the adapters off
    policy = json.loads((out / "sweep" / "ppo_lr0p001" / "artifacts" / "policy" / "config.json").read_text())
    assert policy["config"]["base"]["kind"] == "merged" and policy["config"]["base"]["name_or_path"].endswith(
        "pi0/artifacts/policy")
    pi0_cells = json.loads((out / "evaluation" / "pi0" / "result.json").read_text())["cells"]
    assert all("distinct_initial_states" in c for c in pi0_cells)
    if os.environ.get("VLA_CL_BROWSER") == "skip":
        pytest.skip("VLA_CL_BROWSER=skip: set up without a headless browser")
    check = check_page(out / "report.html")
    assert check.ok, check.broken
    assert len(check.videos) == 6 and all(state >= 2 for _, state, _ in check.videos)


@pytest.mark.slow
@pytest.mark.sim
def test_the_report_opens_in_a_browser_with_every_image_and_video(smoke_run):
    import os

    from vla_cl.browser import check_page

    if os.environ.get("VLA_CL_BROWSER") == "skip":  # set up without a browser on purpose
        pytest.skip("VLA_CL_BROWSER=skip: set up without a headless browser")

    out, _ = smoke_run
    report = out / "report.html"
    text = report.read_text()
    for needed in ("Pareto", "forward KL", "R<sup>2</sup>", "Generalisation axes", "<video", "Finding",
                   "trade-off curves", "Retention acting greedily", "weighted leave-one-out"):
        assert needed in text
    assert "paper (ParityMNIST)" not in text  # no R^2 value this project cannot cite
    assert "file://" not in text and str(out) not in text  # every asset is referenced relatively
    check = check_page(report)
    assert check.ok, check.broken
    assert len(check.images) >= 3 and len(check.videos) == 6
    assert all(width > 0 for _, width in check.images) and all(state >= 2 for _, state, _ in check.videos)
