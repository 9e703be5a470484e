"""`make setup`'s bootstrap: idempotent fast path and clear messages when a step cannot succeed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def boot(tmp_path, monkeypatch):
    """A fresh copy of scripts/bootstrap.py whose venv lives in tmp_path."""
    spec = importlib.util.spec_from_file_location("bootstrap_under_test", REPO / "scripts" / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = tmp_path / ".venv"
    monkeypatch.setattr(module, "VENV", venv)
    monkeypatch.setattr(module, "STAMP", venv / ".vla-cl-setup.json")
    monkeypatch.setattr(module, "VULKAN_DIR", venv / "vulkan")
    monkeypatch.setattr(module, "ICD_JSON", venv / "vulkan" / "lvp_icd.json")
    return module


def _forbid_commands(module, monkeypatch):
    def refuse(cmd, what, **kwargs):
        raise AssertionError(f"the fast path ran a command: {cmd}")

    monkeypatch.setattr(module, "run", refuse)


def test_second_run_on_a_set_up_machine_only_reads_the_stamp(boot, monkeypatch, capsys):
    (boot.VENV / "bin").mkdir(parents=True)
    (boot.VENV / "bin" / "python").write_text("")
    monkeypatch.setenv("VLA_CL_VULKAN", "skip")
    monkeypatch.delenv("TORCH_SPEC", raising=False)
    monkeypatch.delenv("VLA_CL_EXTRAS", raising=False)
    stamp = boot.fingerprint(boot.DEFAULT_TORCH_SPEC, boot.DEFAULT_EXTRAS, "skip")
    boot.STAMP.write_text(json.dumps({"fingerprint": stamp, "torch": "2.x", "vulkan": "skipped"}))
    monkeypatch.setattr(boot.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    _forbid_commands(boot, monkeypatch)
    assert boot.main() == 0
    assert "up to date" in capsys.readouterr().out


def test_changed_pyproject_or_options_invalidate_the_stamp(boot):
    a = boot.fingerprint("torch==2.13.0", boot.DEFAULT_EXTRAS, "auto")
    assert a != boot.fingerprint("torch==2.14.1", boot.DEFAULT_EXTRAS, "auto")
    assert a != boot.fingerprint("torch==2.13.0", "test", "auto")


def test_missing_apt_names_the_driver_and_how_to_get_it(boot, monkeypatch):
    monkeypatch.setattr(boot, "gpu_vulkan_driver", lambda: None)
    monkeypatch.setattr(boot, "system_mesa_version", lambda: "22.3.6-1+deb12u1")
    monkeypatch.setattr(boot.shutil, "which", lambda tool: None)
    with pytest.raises(boot.SetupError) as err:
        boot.ensure_vulkan("auto")
    message = str(err.value)
    assert "apt-get" in message and "Mesa >= 25" in message and "VLA_CL_VULKAN=skip" in message


def test_missing_keyring_is_named(boot, monkeypatch, tmp_path):
    monkeypatch.setattr(boot, "gpu_vulkan_driver", lambda: None)
    monkeypatch.setattr(boot, "system_mesa_version", lambda: None)
    monkeypatch.setattr(boot.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(boot, "DEBIAN_KEYRING", tmp_path / "no-such-keyring.gpg")
    with pytest.raises(boot.SetupError, match="keyring"):
        boot.ensure_vulkan("auto")


def test_gpu_driver_or_new_system_mesa_means_nothing_to_install(boot, monkeypatch):
    _forbid_commands(boot, monkeypatch)
    monkeypatch.setattr(boot, "gpu_vulkan_driver", lambda: Path("/usr/share/vulkan/icd.d/nvidia_icd.json"))
    assert "GPU driver" in boot.ensure_vulkan("auto")
    monkeypatch.setattr(boot, "gpu_vulkan_driver", lambda: None)
    monkeypatch.setattr(boot, "system_mesa_version", lambda: "25.0.7-2~bpo12+1")
    assert "system Mesa" in boot.ensure_vulkan("auto")


def test_invalid_vulkan_mode_lists_choices(boot):
    with pytest.raises(boot.SetupError, match="auto, private, skip"):
        boot.ensure_vulkan("sometimes")


def test_unreachable_torch_names_the_fix(boot, monkeypatch):
    monkeypatch.setattr(boot, "installed_torch", lambda: None)

    def fail(cmd, what, **kwargs):
        raise boot.SetupError(f"{what} failed")

    monkeypatch.setattr(boot, "run", fail)
    with pytest.raises(boot.SetupError, match="TORCH_SPEC"):
        boot.ensure_torch("torch==9.9.9")


def test_old_python_is_refused_with_the_fix(boot, monkeypatch):
    monkeypatch.setattr(boot, "MIN_PYTHON", (sys.version_info.major, sys.version_info.minor + 1))
    with pytest.raises(boot.SetupError, match="PYTHON="):
        boot.check_python()


@pytest.mark.parametrize("version,major", [("25.0.7-2~bpo12+1", 25), ("22.3.6-1+deb12u1", 22), ("1:24.1", 24)])
def test_mesa_major(boot, version, major):
    assert boot.mesa_major(version) == major


# --------------------------------------------------------------------------- headless browser


def _fake_system(boot, monkeypatch, present: set[str], root: bool) -> list[list[str]]:
    """`which` finds only `present`; installing Debian's chromium packages adds the two binaries."""
    commands: list[list[str]] = []

    def which(tool):
        return f"/usr/bin/{tool}" if tool in present else None

    def run(cmd, what, **kwargs):
        commands.append(cmd)
        if "install" in cmd:
            present.update(boot.BROWSER_BINARIES)

    monkeypatch.setattr(boot.shutil, "which", which)
    monkeypatch.setattr(boot.os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(boot, "run", run)
    return commands


def test_browser_present_means_no_apt(boot, monkeypatch):
    commands = _fake_system(boot, monkeypatch, {"chromium", "chromedriver", "apt-get"}, root=True)
    assert "/usr/bin/chromium" in boot.ensure_browser("auto", boot.DEFAULT_EXTRAS)
    assert commands == []


def test_missing_browser_is_installed_with_apt(boot, monkeypatch):
    commands = _fake_system(boot, monkeypatch, {"chromium", "apt-get"}, root=True)
    assert "/usr/bin/chromium" in boot.ensure_browser("auto", boot.DEFAULT_EXTRAS)
    update, install = commands
    assert update[-2:] == ["apt-get", "update"] and "DEBIAN_FRONTEND=noninteractive" in update
    assert install[install.index("apt-get") :] == [
        "apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"
    ]
    assert "DEBIAN_FRONTEND=noninteractive" in install


def test_not_root_uses_sudo_without_a_password_prompt(boot, monkeypatch):
    commands = _fake_system(boot, monkeypatch, {"apt-get", "sudo"}, root=False)
    boot.ensure_browser("auto", "test")
    assert all(cmd[:2] == ["sudo", "-n"] for cmd in commands) and len(commands) == 2


def test_not_root_and_no_sudo_names_the_packages_and_the_command(boot, monkeypatch):
    commands = _fake_system(boot, monkeypatch, {"apt-get"}, root=False)
    with pytest.raises(boot.SetupError) as err:
        boot.ensure_browser("auto", boot.DEFAULT_EXTRAS)
    message = str(err.value)
    assert "chromium chromium-driver" in message and "apt-get install" in message
    assert "VLA_CL_BROWSER=skip" in message
    assert commands == []


def test_failed_sudo_keeps_the_fix_in_the_message(boot, monkeypatch):
    _fake_system(boot, monkeypatch, {"apt-get", "sudo"}, root=False)

    def refuse(cmd, what, **kwargs):
        raise boot.SetupError(f"{what} failed: sudo: a password is required")

    monkeypatch.setattr(boot, "run", refuse)
    with pytest.raises(boot.SetupError, match="chromium-driver"):
        boot.ensure_browser("auto", "test")


@pytest.mark.parametrize("mode,extras", [("skip", "llm,parity,test"), ("auto", "llm,parity")])
def test_browser_skipped_or_not_needed_runs_nothing(boot, monkeypatch, mode, extras):
    commands = _fake_system(boot, monkeypatch, set(), root=False)
    boot.ensure_browser(mode, extras)
    assert commands == []


def test_browser_knob_skips_it_on_the_fast_path(boot, monkeypatch, capsys):
    (boot.VENV / "bin").mkdir(parents=True)
    (boot.VENV / "bin" / "python").write_text("")
    monkeypatch.setenv("VLA_CL_VULKAN", "skip")
    monkeypatch.setenv("VLA_CL_BROWSER", "skip")
    monkeypatch.delenv("TORCH_SPEC", raising=False)
    monkeypatch.delenv("VLA_CL_EXTRAS", raising=False)
    stamp = boot.fingerprint(boot.DEFAULT_TORCH_SPEC, boot.DEFAULT_EXTRAS, "skip")
    boot.STAMP.write_text(json.dumps({"fingerprint": stamp, "torch": "2.x", "vulkan": "skipped"}))
    monkeypatch.setattr(boot.shutil, "which", lambda tool: None)
    _forbid_commands(boot, monkeypatch)
    assert boot.main() == 0
    assert "up to date" in capsys.readouterr().out
    # Without the knob, a stamp cannot stand in for a browser missing from this machine.
    monkeypatch.setenv("VLA_CL_BROWSER", "auto")
    assert boot.main() == 1
    assert "chromium-driver" in capsys.readouterr().err


def test_invalid_browser_mode_lists_choices(boot):
    with pytest.raises(boot.SetupError, match="auto, skip"):
        boot.ensure_browser("sometimes", "test")
