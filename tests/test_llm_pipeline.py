"""`vla-cl llm preset=smoke` end to end: every stage, the report, resuming after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trl")

from vla_cl.cli import main

REPO = Path(__file__).resolve().parents[1]
STAGES = ["probes", "pi0_eval", "sweep", "evaluation", "law", "report"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset killed in its sweep, then started again to the end."""
    out = tmp_path_factory.mktemp("llm") / "run"
    command = [sys.executable, "-m", "vla_cl.cli", "llm", "preset=smoke", f"out_dir={out}", "workers=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 600
    while not (out / "sweep").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # into the first training run
    if first.poll() is None:
        os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, second.stdout


@pytest.mark.slow
def test_every_stage_runs_resumes_and_reports_labelled_numbers(smoke):
    out, stdout = smoke
    assert "reused" in stdout and "stage timings" in stdout
    assert [t["stage"] for t in json.loads((out / "timings.json").read_text())] == STAGES
    summary = json.loads((out / "summary.json").read_text())
    assert {p["key"].split("__")[0] for p in summary["points"]} == {"grpo_lr0p001", "sft_lr0p001"}
    assert sorted(p["checkpoint_step"] for p in summary["points"]) == [1, 1, 2, 2]
    sources = summary["retention_sources"]
    assert set(sources) == {"hellaswag", "mmlu", "truthfulqa_mc2", "humaneval", "capitals"}
    assert all(sources[b]["stand_in"] and "stand-in" in sources[b]["label"] for b in ("hellaswag", "mmlu",
                                                                                    "truthfulqa_mc2"))
    assert not sources["humaneval"]["stand_in"]
    for key, kl in summary["forward_kl"].items():
        assert kl["forward_kl"] >= 0 and kl["responses"] == 4, key
    for point in summary["points"]:
        for name in ("forward_kl_new", "reverse_kl_old", "weight_fisher_l2", "cka_old"):
            assert point[name] is not None, name
    assert "forward_kl_new" in summary["r2"] and summary["finding"]["statement"]
    assert summary["noise_ceiling"]["points"] == 4 and summary["noise_ceiling_words"]  # the fits' noise ceiling
    # each run logged the KL during training at every step of its 2
    for run in ("grpo_lr0p001", "sft_lr0p001"):
        done = json.loads((out / "sweep" / run / "done.json").read_text())
        assert [h["step"] for h in done["kl_history"]] == [0, 1, 2]


@pytest.mark.slow
def test_the_report_opens_in_a_browser_and_labels_the_stand_ins(smoke):
    from vla_cl.browser import check_page

    out, _ = smoke
    text = (out / "report.html").read_text()
    for needed in ("Finding", "R<sup>2</sup>", "stand-in", "HumanEval pass@1 (real problems", "kl_training.png"):
        assert needed in text
    if os.environ.get("VLA_CL_BROWSER") == "skip":
        pytest.skip("VLA_CL_BROWSER=skip: set up without a headless browser")
    check = check_page(out / "report.html")
    assert check.ok, check.broken
    assert len(check.images) == 4 and all(width > 0 for _, width in check.images)


def test_an_unreachable_model_fails_fast_and_names_the_offline_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["llm", "model.name=qwen2.5-3b-instruct", f"out_dir={tmp_path / 'run'}"]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert "Qwen/Qwen2.5-3B-Instruct" in err and "smollm2-135m-instruct" in err


def test_bad_values_are_refused_before_any_work(tmp_path, capsys):
    assert main(["llm", "grpo_lrs=[-1]", f"out_dir={tmp_path / 'a'}"]) == 2
    assert "grpo_lrs" in capsys.readouterr().err
    assert main(["llm", "retention=[hellaswag,bleu]", f"out_dir={tmp_path / 'b'}"]) == 2
    assert "retention" in capsys.readouterr().err
    assert main(["llm", "task=nope", f"out_dir={tmp_path / 'c'}"]) == 2
    assert "elements" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_each_report_finds_the_other_halfs_latest_report(tmp_path, monkeypatch):
    from vla_cl.runs import latest_report

    monkeypatch.chdir(tmp_path / "..")  # no runs/ folder of the repository in the way

    older, newer = tmp_path / "razor" / "a" / "report.html", tmp_path / "razor" / "b" / "report.html"
    for i, page in enumerate((older, newer)):
        page.parent.mkdir(parents=True)
        page.write_text("<html></html>")
        os.utime(page, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "razor" / "unfinished").mkdir()  # no report: not a candidate
    assert latest_report("razor", near=tmp_path / "llm" / "run1") == newer.resolve()
    assert latest_report("nothing", near=tmp_path / "llm" / "run1") is None
