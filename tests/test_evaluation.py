"""The evaluation instrument: suites, evaluate(), results, retention, and the eval / pretrain commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vla_cl.evaluation.runner as evaluate_module
from vla_cl.cli import main
from vla_cl.envs.experts import EXPERTS
from vla_cl.evaluation import SuiteConfig, evaluate, load_suite, read_result
from vla_cl.evaluation.retention import retention
from vla_cl.evaluation.runner import EvaluationConflict
from vla_cl.stats import wilson_interval

pytestmark = pytest.mark.sim
PUSH, PULL = "maniskill/PushCube-v1", "maniskill/PullCube-v1"


def state_policy(state_dim: int = 16, seed: int = 0, instructions=("push the blue cube forward onto the target",)):
    """A small untrained state_token policy with the Panda tasks' action statistics."""
    from vla_cl.envs.panda import panda_action_adapter
    from vla_cl.policies import make_policy
    from vla_cl.tokenizer import ActionTokenizer, NormStats

    stats = panda_action_adapter().action_stats()
    torch.manual_seed(seed)
    tokenizer = ActionTokenizer(256, 256, NormStats(stats["q01"], stats["q99"], stats["mask"]))
    return make_policy("state_token", tokenizer=tokenizer, state_dim=state_dim, instructions=list(instructions),
                       hidden=[16])


def short_suite(**changes) -> SuiteConfig:
    base = {"name": "short", "tasks": [PUSH], "episodes": 3, "seeds": [500], "max_episode_steps": 8,
            "axes": ["in_distribution"]}
    return SuiteConfig(**{**base, **changes})


# ------------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("task", sorted(EXPERTS))
def test_the_expert_through_evaluate_matches_what_demos_measured(task):
    """Every task with a scripted expert: evaluate(policy=expert) gives, episode by episode, the success that
    the demonstration recorder measured on the same reset seeds."""
    from vla_cl.envs.demos import collect_demos

    seed, n = 7, 3
    demos = collect_demos(task, n, seed=seed, only_success=False)
    recorded = [bool(demos.episode(k)["success"].any()) for k in range(n)]
    result = evaluate("expert", SuiteConfig(name="contract", tasks=[task], episodes=n, seeds=[seed]), progress=False)
    cell = result.cell(task)
    assert cell.seeds == demos.meta["episode_seeds"] == list(range(seed, seed + n))
    assert cell.successes == recorded
    assert cell.lengths == demos.meta["episode_lengths"]


# ------------------------------------------------------------------------------------------ results


def test_a_result_has_every_cell_with_its_interval_and_round_trips(tmp_path):
    suite = short_suite(tasks=[PUSH, PULL], axes=["in_distribution", "position", "instruction", "visual"])
    result = evaluate(state_policy(), suite, out_dir=tmp_path, progress=False)
    for task in (PUSH, PULL):
        for axis in ("in_distribution", "position", "instruction"):
            cell = result.cell(task, axis)
            assert cell.episodes == 3 and cell.seeds == [500, 501, 502]
            assert cell.interval == wilson_interval(sum(cell.successes), 3)
            assert all(1 <= n <= 8 for n in cell.lengths)
        visual = result.cell(task, "visual")
        assert not visual.applicable and "reads no images" in visual.not_applicable
    again = read_result(tmp_path)
    assert again.to_dict() == result.to_dict()
    table = (tmp_path / "result.md").read_text()
    assert "| maniskill/PushCube-v1 |" in table and "n/a (the policy reads no images)" in table
    # the instruction axis really used held-out paraphrases, on the same starting positions as in_distribution
    from vla_cl.envs import get_spec, make

    env = make(PUSH, instruction="paraphrase")
    assert env.reset(seed=500)[0]["instruction"] in get_spec(PUSH).paraphrases
    env.close()


def test_a_cell_counts_the_distinct_starts_its_episodes_covered():
    from vla_cl.evaluation.results import CellResult, SuiteResult

    repeated = CellResult("simpler/x", "in_distribution", list(range(6)), [True, False] * 3, [5] * 6, [0.0] * 6,
                          initial_states=["config 0", "config 1", "config 0", "config 1", "config 2", "config 0"])
    continuous = CellResult("simpler/x", "position", list(range(6)), [True] * 6, [5] * 6, [0.0] * 6)
    assert repeated.distinct_initial_states == 3 and continuous.distinct_initial_states == 6
    assert repeated.summary()["distinct_initial_states"] == 3
    assert CellResult.from_dict(repeated.to_dict()).initial_states == repeated.initial_states
    text = SuiteResult({"name": "s"}, "p", {("simpler/x", "in_distribution"): repeated,
                                             ("simpler/x", "position"): continuous}).markdown()
    assert "simpler/x / in_distribution 3" in text and "position 6" not in text
    with pytest.raises(ValueError, match="initial states for"):
        CellResult("t", "a", [0, 1], [True, True], [1, 1], [0.0, 0.0], initial_states=["x"])


def test_the_visual_axis_runs_for_a_policy_that_reads_images():
    from vla_cl.policies import get_policy_class, make_policy
    from vla_cl.tokenizer import ActionTokenizer

    config = {**get_policy_class("small_vlm").tiny_config(), "state_dim": 0,
              "instructions": ["push the blue cube forward onto the target"], "value_head": False}
    policy = make_policy("small_vlm", tokenizer=ActionTokenizer(256, 256), **config)
    result = evaluate(policy, short_suite(episodes=2, max_episode_steps=3, axes=["visual"]), progress=False)
    cell = result.cell(PUSH, "visual")
    assert cell.applicable and cell.episodes == 2


def test_results_do_not_depend_on_the_number_of_workers():
    suite = short_suite(tasks=[PUSH, PULL], axes=["in_distribution", "position"], episodes=2)
    policy = state_policy(seed=3)
    one = evaluate(policy, suite, workers=1, progress=False)
    two = evaluate(policy, suite, workers=2, progress=False)
    for key, cell in one.cells.items():
        other = two.cells[key]
        assert (cell.successes, cell.lengths, cell.returns) == (other.successes, other.lengths, other.returns)


def test_the_same_suite_and_seed_give_the_same_result_and_sampling_follows_the_seed():
    policy = state_policy(seed=1)
    a = evaluate(policy, short_suite(), progress=False).cell(PUSH)
    b = evaluate(policy, short_suite(), progress=False).cell(PUSH)
    assert (a.successes, a.lengths, a.returns) == (b.successes, b.lengths, b.returns)
    c = evaluate(policy, short_suite(seeds=[900]), progress=False).cell(PUSH)
    assert c.seeds == [900, 901, 902] and c.returns != a.returns


def test_an_interrupted_evaluation_reuses_its_finished_jobs(tmp_path, monkeypatch):
    suite = short_suite(tasks=[PUSH, PULL])
    policy = state_policy()
    first = evaluate(policy, suite, out_dir=tmp_path, progress=False)
    jobs = sorted((tmp_path / "jobs").glob("*__in_distribution__*.json"))
    assert len(jobs) == 2
    jobs[1].unlink()  # as if killed while the second job ran
    (tmp_path / "result.json").unlink()
    ran = []
    real = evaluate_module.run_job
    monkeypatch.setattr(evaluate_module, "run_job", lambda *a, **k: ran.append(a[3]) or real(*a, **k))
    again = evaluate(policy, suite, out_dir=tmp_path, progress=False)
    assert len(ran) == 1 and again.to_dict()["cells"] == first.to_dict()["cells"]
    with pytest.raises(EvaluationConflict, match="another policy or suite"):
        evaluate(state_policy(seed=9), suite, out_dir=tmp_path, progress=False)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_suites_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="unknown task id"):
        SuiteConfig(tasks=["maniskill/NoSuchTask-v1"])
    with pytest.raises(ValueError, match="axes"):
        SuiteConfig(tasks=[PUSH], axes=["lighting"])
    with pytest.raises(ValueError, match="episodes"):
        SuiteConfig(tasks=[PUSH], episodes=0)
    from vla_cl.envs.registry import TaskSpec, register

    register(TaskSpec("toy/grid_only", "x:y", "x", "do it", 5, paraphrases=("a", "b", "c"), layouts=("grid",)))
    with pytest.raises(ValueError, match="axis 'position' cannot run on toy/grid_only"):
        SuiteConfig(tasks=["toy/grid_only"], axes=["position"])
    with pytest.raises(ValueError, match="layout, instruction and visual come from the axes"):
        SuiteConfig(tasks=[{"task": PUSH, "options": {"layout": "random"}}])
    with pytest.raises(ValueError, match="seeds"):
        SuiteConfig(tasks=[PUSH], episodes=10, seeds=[0, 5])
    with pytest.raises(ValueError, match="neither a suite name"):
        load_suite("no-such-suite")


def test_a_policy_the_suite_cannot_run_is_refused_before_any_episode(monkeypatch):
    monkeypatch.setattr(evaluate_module, "run_job", lambda *a, **k: pytest.fail("an episode ran"))
    with pytest.raises(ValueError, match="reads 5-D states, but maniskill/PushCube-v1 gives 16-D"):
        evaluate(state_policy(state_dim=5), short_suite(), progress=False)
    with pytest.raises(ValueError, match="obs_mode"):
        from vla_cl.policies import get_policy_class, make_policy
        from vla_cl.tokenizer import ActionTokenizer

        config = {**get_policy_class("small_vlm").tiny_config(), "state_dim": 0, "instructions": ["push"]}
        vlm = make_policy("small_vlm", tokenizer=ActionTokenizer(256, 256), **config)
        evaluate(vlm, short_suite(obs_mode="state"), progress=False)
    with pytest.raises(ValueError, match="no scripted expert"):
        evaluate("expert", short_suite(tasks=["maniskill/LiftPegUpright-v1"]), progress=False)


# ------------------------------------------------------------------------------------------ retention


def test_retention_pairs_episodes_by_seed(tmp_path):
    base = evaluate("expert", short_suite(tasks=[PUSH, PULL], max_episode_steps=None), progress=False)
    tuned = evaluate(state_policy(), short_suite(tasks=[PUSH, PULL], max_episode_steps=None), progress=False)
    kept = retention(base, tuned, n_resamples=2000)
    for task in (PUSH, PULL):
        f = kept.forgetting[task]
        expected = np.mean(base.cell(task).successes) - np.mean(tuned.cell(task).successes)
        assert f.estimate == pytest.approx(expected) and f.low <= f.estimate <= f.high
    assert kept.mean_forgetting.estimate == pytest.approx(np.mean([kept.forgetting[t].estimate for t in (PUSH, PULL)]))
    other = evaluate(state_policy(), short_suite(tasks=[PUSH, PULL], seeds=[800], max_episode_steps=None),
                     progress=False)
    with pytest.raises(ValueError, match="different episodes"):
        retention(base, other)


# ------------------------------------------------------------------------------------------ commands


def test_the_eval_command_writes_results_and_retention(tmp_path, capsys):
    base, out = tmp_path / "base", tmp_path / "random"
    assert main(["eval", "policy=expert", "suite=smoke", "episodes=2", f"out_dir={base}", "progress=false"]) == 0
    assert main(["eval", "policy=random", "suite=smoke", "episodes=2", f"base={base}", f"out_dir={out}",
                 "progress=false"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["policy"] == "random" and len(result["cells"]) == 4
    kept = json.loads((out / "retention.json").read_text())
    assert set(kept["forgetting"]) == {PUSH, PULL}
    assert main(["eval", "policy=expert", "suite=nope", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "neither a suite name" in capsys.readouterr().err
    assert main(["eval", "policy=/no/such/folder", f"out_dir={tmp_path / 'y'}"]) == 2


@pytest.mark.slow
def test_pretrain_builds_a_reloadable_multitask_pi0_and_measures_it(tmp_path):
    from vla_cl.policies import load_policy

    out = tmp_path / "pi0"
    args = ["pretrain", f"tasks=[{PUSH},{PULL}]", "demos=4", "epochs=2", "eval_episodes=2", f"out_dir={out}",
            "progress=false", "workers=1"]
    assert main(args) == 0
    policy = load_policy(out / "artifacts" / "policy")
    assert set(policy.instruction.vocabulary) >= {"push", "pull", "blue", "cube"}
    result = read_result(out / "eval")
    assert result.tasks == [PUSH, PULL] and result.cell(PUSH).episodes == 2
    demos = sorted(p.name for p in (out / "artifacts" / "demos").iterdir())
    assert demos == ["maniskill_PullCube-v1", "maniskill_PushCube-v1"]
    stamp = (out / "artifacts" / "demos" / demos[0] / "demos.json").stat().st_mtime
    assert main(args) == 0  # started again: the demonstrations are reused, not recorded again
    assert (out / "artifacts" / "demos" / demos[0] / "demos.json").stat().st_mtime == stamp


def test_continual_best_checkpoints_keep_the_policy_at_every_in_loop_evaluation(tmp_path):
    from vla_cl.evaluation.continual_command import ContinualConfig

    init = str(state_policy(instructions=["push the blue cube forward onto the target"]).save_pretrained(tmp_path / "pi0"))
    make = lambda **fields: ContinualConfig(init=init, tasks=[PUSH, PULL], updater="reinforce", **fields)
    stage = lambda config, **kw: config._stage_config(0, PUSH, init, None, tmp_path / "stage", **kw)
    assert stage(make(train={"eval_every": 3})).snapshot_every == 3  # checkpoint=best is the default
    assert stage(make(train={"eval_every": 0})).snapshot_every == 0  # candidates: iteration 0 and the last
    assert stage(make(train={"eval_every": 3}), reference=True).snapshot_every == 0  # nothing handed on
    assert stage(make(checkpoint="final", train={"eval_every": 3})).snapshot_every == 0
    assert stage(make(train={"eval_every": 4, "snapshot_every": 2})).snapshot_every == 2  # keeps them all too
    with pytest.raises(ValueError, match=r"train.snapshot_every: 5 \(allowed: a divisor of the stage's eval_every "
                                         r"\(2\)"):
        make(train={"eval_every": 2, "snapshot_every": 5})
    with pytest.raises(ValueError, match=r"invalid value for checkpoint: 'last' \(allowed: best or final\)"):
        make(checkpoint="last")


@pytest.mark.slow
def test_a_short_continual_run_gives_the_task_by_stage_matrix_and_every_metric(tmp_path):
    init = state_policy(instructions=["push the blue cube forward onto the target",
                                      "pull the blue cube back onto the target"]).save_pretrained(tmp_path / "pi0")
    out = tmp_path / "continual"
    args = ["continual", f"init={init}", f"tasks=[{PUSH},{PULL}]", "updater=reinforce", "iterations=2",
            "train={updater: {episodes: 2}, num_envs: 1, max_episode_steps: 6, eval_episodes: 2, eval_every: 1, probe_episodes: 1}",
            "eval_episodes=2", "reference=true", f"out_dir={out}", "progress=false"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    matrix = np.asarray(summary["matrix"])
    assert matrix.shape == (2, 2) and ((matrix >= 0) & (matrix <= 1)).all()
    assert [len(curve) for curve in summary["during"]] == [3, 3]  # iterations 0, 1 and 2
    assert len(summary["reference_during"]) == 2
    metrics = summary["metrics"]
    for key in ("fwt", "nbt", "nbt_inloop_max", "auc", "average_performance", "forgetting",
                "forgetting_first_k_minus_1", "fwt_per_task", "nbt_per_task", "nbt_inloop_max_per_task",
                "auc_per_task", "cw_forgetting_per_task", "cw_forward_transfer_per_task"):
        assert key in metrics
    assert metrics["average_performance"] == pytest.approx(matrix[-1].mean())
    assert metrics["nbt_per_task"][-1] is None and metrics["cw_forgetting_per_task"][-1] == 0.0
    assert metrics["nbt_per_task"][0] == pytest.approx(matrix[0, 0] - matrix[1, 0])  # c_00 = R[0, 0]
    assert metrics["nbt_inloop_max_per_task"][0] == pytest.approx(max(summary["during"][0]) - matrix[1, 0])
    assert metrics["forgetting"] == pytest.approx((matrix[0, 0] - matrix[1, 0]) / 2)  # (F_0 + 0) / 2
    assert (out / "artifacts" / "matrix.png").stat().st_size > 1000 and "LIBERO FWT" in (out / "matrix.md").read_text()
    for stage in ("stage_0", "stage_1", "reference_0", "reference_1"):
        assert (out / stage / "artifacts" / "policy" / "model.safetensors").exists()
    # checkpoint=best (the default): every in-loop evaluation's policy is kept (iteration 1's as a snapshot;
    # not in the reference runs), the stage hands on the best one and the suite evaluates that one.
    import yaml

    from vla_cl.evaluation.runner import resolve_policy

    assert summary["checkpoint"] == "best" and len(summary["chosen"]) == 2
    stage_init = str(init)
    for i, (chosen, curve) in enumerate(zip(summary["chosen"], summary["during"])):
        stage = out / f"stage_{i}"
        assert (stage / "artifacts" / "snapshots" / "iter-000001" / "model.safetensors").exists()
        assert not (out / f"reference_{i}" / "artifacts" / "snapshots").exists()
        best = curve.index(max(curve))  # the in-loop evaluations are at iterations 0, 1, 2: the earliest best
        folder = [stage_init, str(stage / "artifacts" / "snapshots" / "iter-000001"),
                  str(stage / "artifacts" / "policy")][best]
        assert chosen == {"stage": i, "task": [PUSH, PULL][i], "iteration": best, "policy": folder,
                          "success": max(curve)}
        evaluated = json.loads((stage / "eval" / "jobs" / "fingerprint.json").read_text())["policy"]
        assert evaluated == resolve_policy(folder)[1].fingerprint  # row i evaluates the chosen policy
        stage_init = folder  # and stage i + 1 starts from it
    assert yaml.safe_load((out / "stage_1" / "config.yaml").read_text())["init"] == summary["chosen"][0]["policy"]
    logged = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m.get("event") == "stage"]
    assert [(m["chosen_iteration"], m["chosen_policy"]) for m in logged] == [(c["iteration"], c["policy"])
                                                                           for c in summary["chosen"]]
    assert main(args) == 0  # started again: every stage is finished, the same checkpoints are chosen
    assert json.loads((out / "summary.json").read_text())["chosen"] == summary["chosen"]
