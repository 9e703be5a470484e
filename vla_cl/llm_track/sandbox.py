"""Run model-generated Python in a child process with limits, never in the evaluating process (Linux).

Why: the HumanEval retention benchmark executes code a language model wrote. A completion can loop
forever, allocate all memory, fork without end, crash the interpreter or delete files by mistake. Each
program therefore runs in its own interpreter (``python -I -S``) inside a fresh temporary directory, in a
new session so that the whole process group can be killed, with resource limits (CPU time, address space,
file size, no core dumps) and a cap on the number of processes.

The cap on processes uses the first mechanism that the kernel enforces here:

* ``"pids-cgroup"``: running as root, where ``RLIMIT_NPROC`` is ignored by the kernel, a cgroup-v1 ``pids``
  group (``/sys/fs/cgroup/pids``) with ``pids.max`` holds the program and all its children;
* ``"rlimit-nproc"``: running as an ordinary user, ``RLIMIT_NPROC`` is set to the user's current process
  count plus a small margin (the limit counts every process of the user, not only the sandbox's);
* ``"none"``: root without a writable pids cgroup. Only the in-process guard below and the kill of the
  process group at the end remain. ``fork_limit_mechanism()`` says which one applies.

Before the program starts, the boot code (this file, run as a script) disables in-process the functions
that spawn or signal processes (``os.fork``, ``os.system``, ``subprocess``, ``os.kill`` of other
processes, ...) and makes path operations that write (``open`` for writing, ``os.remove``,
``os.rename``, ``os.mkdir``, ...) raise ``PermissionError`` when the path resolves outside the temporary
directory. HOME, TMPDIR and the working directory all point into that directory.

This is a guard against *accidental* damage by model-generated code, not a security boundary: code written
to escape (``ctypes`` system calls, ``io.FileIO``, reopening file descriptors, ...) can get past the
in-process guard. Running adversarial code needs an isolation layer below Python: a container or VM
without the host's files, a seccomp filter on system calls, an unprivileged user, no network.

Outcomes: exit code 0 is ``"passed"``; an exception or any other exit code is ``"failed"`` (a
``sys.exit`` before the end counts as failed, because it skips the tests that follow it); a signal or a
``MemoryError`` is ``"crashed"``; running past the time limit is ``"timeout"``. Callers score everything
but ``"passed"`` as a failure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "crashed")

MAX_PROCESSES = 32  # processes and threads a program may have at once (the cgroup / RLIMIT_NPROC margin)
MAX_FILE_BYTES = 4 * 2**20  # RLIMIT_FSIZE: no file the program writes (stderr included) grows past this
DETAIL_CHARS = 1500  # how much of the end of stderr a result keeps

# Exit codes the boot code uses to tell the parent what happened (ordinary exceptions exit with 1).
_EXIT_MEMORY = 97
_EXIT_EARLY = 98
_EXIT_SETUP = 99

_PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
_ALWAYS_WRITABLE = ("/dev/null",)


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (as opposed to the program failing inside it)."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How one program ended: ``status`` is one of ``STATUSES``; ``detail`` is the end of its stderr."""

    status: str
    seconds: float
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"SandboxResult.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# --------------------------------------------------------------------------------------------------
# Parent side: start the program, wait for it, kill what is left, classify the outcome.
# --------------------------------------------------------------------------------------------------


def run_program(program: str, timeout: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run ``program`` (Python source) in a fresh sandboxed interpreter and say how it ended."""
    _check_limits(timeout, memory_mb)
    # Imported here, not at the top: this file is also the child's boot script, which should start fast
    # and must not hold a reference to subprocess's real fork_exec from before the guard replaces it.
    import subprocess
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="vla_cl_sandbox_") as tmp,
        tempfile.TemporaryFile() as stderr,
        _pids_cgroup() as cgroup,
    ):
        root = os.path.realpath(tmp)
        script = Path(root) / "program.py"
        script.write_text(program, encoding="utf-8")
        limits = _boot_arguments(root, timeout, memory_mb, cgroup)
        start = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(script), *limits],
            cwd=root,
            env=_minimal_env(root),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            timed_out = not _wait_without_reaping(process.pid, timeout)
        finally:
            # The group leader is still unreaped here, so its pid (the group id) cannot have been reused.
            _kill_group(process.pid)
            returncode = process.wait()
            _kill_cgroup(cgroup)
        seconds = time.monotonic() - start
        tail = _read_tail(stderr)
    return _classify(returncode, timed_out, seconds, tail, timeout)


def run_many(
    programs: Sequence[str], timeout: float = 5.0, memory_mb: int = 512, workers: int = 2
) -> list[SandboxResult]:
    """Run several programs, ``workers`` at a time; results come back in the order of ``programs``."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    _check_limits(timeout, memory_mb)
    from concurrent.futures import ThreadPoolExecutor

    # Threads only wait on their child process, so the GIL is no bottleneck.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, timeout, memory_mb), programs))


def fork_limit_mechanism() -> str:
    """Which kernel mechanism caps the number of processes here: pids-cgroup, rlimit-nproc or none."""
    if os.geteuid() != 0:
        return "rlimit-nproc"
    with _pids_cgroup() as cgroup:
        return "pids-cgroup" if cgroup is not None else "none"


def _check_limits(timeout: float, memory_mb: int) -> None:
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(memory_mb, int) or memory_mb < 64:
        raise ValueError(
            f"memory_mb must be an integer of at least 64 (the interpreter needs it), got {memory_mb!r}"
        )


def _minimal_env(root: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}


def _boot_arguments(root: str, timeout: float, memory_mb: int, cgroup: Path | None) -> list[str]:
    cpu_seconds = math.ceil(timeout) + 1
    nproc = _user_process_count() + 1 + MAX_PROCESSES if os.geteuid() != 0 else 0
    procs_file = str(cgroup / "cgroup.procs") if cgroup is not None else ""
    return [root, str(cpu_seconds), str(memory_mb * 2**20), str(nproc), procs_file]


def _user_process_count() -> int:
    """Processes (and threads) of this user now; RLIMIT_NPROC counts all of them, not only the sandbox's."""
    uid = str(os.getuid())
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            count += int(fields.get("Threads", "1"))
    return count


def _read_tail(stream) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - 4 * DETAIL_CHARS))  # utf-8 is at most 4 bytes a character
    return stream.read().decode("utf-8", "replace")[-DETAIL_CHARS:]


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit, leaving it a zombie; True if it exited in time."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.05)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left in the group
        pass


@contextmanager
def _pids_cgroup() -> Iterator[Path | None]:
    """A fresh cgroup-v1 pids group capped at MAX_PROCESSES when running as root, else None."""
    if os.geteuid() != 0 or not (_PIDS_CGROUP_ROOT / "cgroup.procs").exists():
        yield None
        return
    path = _PIDS_CGROUP_ROOT / f"vla_cl_sandbox_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(MAX_PROCESSES))
    except OSError:  # read-only cgroupfs (e.g. a container): fall back to "none"
        _remove_cgroup(path)
        yield None
        return
    try:
        yield path
    finally:
        _kill_cgroup(path)
        _remove_cgroup(path)


def _kill_cgroup(cgroup: Path | None) -> None:
    """SIGKILL whatever is still in the cgroup (it catches children that left the process group)."""
    if cgroup is None:
        return
    for _ in range(100):
        try:
            pids = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _remove_cgroup(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # busy until the killed tasks have gone
            time.sleep(0.02)
    import warnings

    warnings.warn(f"could not remove the sandbox cgroup {path}; remove it with `rmdir {path}`", stacklevel=2)


def _classify(returncode: int, timed_out: bool, seconds: float, tail: str, timeout: float) -> SandboxResult:
    if returncode == _EXIT_SETUP:
        raise SandboxError(f"the sandbox could not start the program: {tail.strip()}")
    if timed_out or returncode == -signal.SIGXCPU:
        return SandboxResult("timeout", seconds, f"exceeded the {timeout} s time limit\n{tail}".strip())
    if returncode == 0:
        return SandboxResult("passed", seconds, tail)
    if returncode < 0:
        return SandboxResult("crashed", seconds, f"killed by {_signal_name(-returncode)}\n{tail}".strip())
    if returncode == _EXIT_MEMORY:
        return SandboxResult("crashed", seconds, tail)
    return SandboxResult("failed", seconds, tail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal without a name
        return f"signal {number}"


# --------------------------------------------------------------------------------------------------
# Child side: this file run as a script. Join the cgroup, set limits, install the guard, run the program.
# --------------------------------------------------------------------------------------------------

# Functions that start, replace or signal processes, or leave the process group: refused outright.
_PROCESS_FUNCTIONS = (
    "fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
    "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp",
    "spawnvpe", "posix_spawn", "posix_spawnp", "killpg", "setsid", "setpgid", "setpgrp",
)  # fmt: skip
# Path functions that write: name -> (path parameters, follow the last symlink?). Refused outside the root.
_PATH_FUNCTIONS = {
    "remove": (("path",), False),
    "unlink": (("path",), False),
    "rmdir": (("path",), False),
    "rename": (("src", "dst"), False),
    "replace": (("src", "dst"), False),
    "symlink": (("dst",), False),
    "link": (("src", "dst"), True),
    "mkdir": (("path",), True),
    "mkfifo": (("path",), True),
    "mknod": (("path",), True),
    "truncate": (("path",), True),
    "chmod": (("path",), True),
    "chown": (("path",), True),
    "lchown": (("path",), False),
    "utime": (("path",), True),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_REAL_EXIT = os._exit  # kept before the guard replaces os._exit


def _boot(argv: list[str]) -> None:
    script, root, cpu_seconds, memory_bytes, nproc, procs_file = argv
    try:
        if procs_file:
            Path(procs_file).write_text(str(os.getpid()))
        _set_limits(int(cpu_seconds), int(memory_bytes), int(nproc))
    except (OSError, ValueError) as error:
        print(f"sandbox setup failed: {error!r}", file=sys.stderr)
        _REAL_EXIT(_EXIT_SETUP)
    _install_guard(root)
    _run_user_program(script)


def _set_limits(cpu_seconds: int, memory_bytes: int, nproc: int) -> None:
    limits = {
        resource.RLIMIT_CPU: (cpu_seconds, cpu_seconds + 1),
        resource.RLIMIT_AS: (memory_bytes, memory_bytes),
        resource.RLIMIT_FSIZE: (MAX_FILE_BYTES, MAX_FILE_BYTES),
        resource.RLIMIT_CORE: (0, 0),
    }
    if nproc:
        limits[resource.RLIMIT_NPROC] = (nproc, nproc)
    for which, limit in limits.items():
        resource.setrlimit(which, limit)


def _run_user_program(script: str) -> None:
    import runpy

    try:
        runpy.run_path(script, run_name="__main__")
    except MemoryError:
        sys.stderr.write("MemoryError: the program ran out of its memory limit\n")
        sys.stderr.flush()
        _REAL_EXIT(_EXIT_MEMORY)
    except SystemExit as exit_:
        sys.stderr.write(
            f"the program called sys.exit({exit_.code!r}) before its end; that skips its tests\n"
        )
        sys.stderr.flush()
        _REAL_EXIT(_EXIT_EARLY)
    sys.stdout.flush()


def _install_guard(root: str) -> None:
    import _posixsubprocess
    import builtins
    import io
    import posix

    for module in (os, posix):
        for name in _PROCESS_FUNCTIONS:
            if hasattr(module, name):
                setattr(module, name, _refused(name))
        for name, (params, follow) in _PATH_FUNCTIONS.items():
            if hasattr(module, name):
                setattr(module, name, _path_guarded(getattr(module, name), name, params, follow, root))
        module.open = _os_open_guarded(module.open, root)
        module.kill = _kill_guarded(module.kill)
        module._exit = _early_exit(module._exit)
    _posixsubprocess.fork_exec = _refused("subprocess")
    builtins.open = io.open = _open_guarded(io.open, root)


def _refused(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"sandbox: {name}() is disabled; generated code may not start processes")

    return refuse


def _kill_guarded(kill):
    def guarded_kill(pid, sig):
        if pid != os.getpid():
            raise PermissionError(f"sandbox: kill({pid}) is disabled; generated code may only signal itself")
        return kill(pid, sig)

    return guarded_kill


def _early_exit(real_exit):
    def early_exit(code):
        sys.stderr.write(f"the program called os._exit({code!r}) before its end; that skips its tests\n")
        sys.stderr.flush()
        real_exit(_EXIT_EARLY)

    return early_exit


def _path_guarded(function, name: str, params: tuple[str, ...], follow: bool, root: str):
    def guarded(*args, **kwargs):
        for position, param in enumerate(params):
            path = args[position] if position < len(args) else kwargs.get(param)
            dir_fd = kwargs.get(f"{param}_dir_fd", kwargs.get("dir_fd"))
            _require_inside(root, name, path, dir_fd, follow)
        return function(*args, **kwargs)

    return guarded


def _os_open_guarded(os_open, root: str):
    def guarded_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & _WRITE_FLAGS:
            _require_inside(root, "os.open", path, dir_fd, follow=True)
        return os_open(path, flags, mode, dir_fd=dir_fd)

    return guarded_open


def _open_guarded(io_open, root: str):
    def guarded_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            _require_inside(root, "open", file, None, follow=True)
        return io_open(file, mode, *args, **kwargs)

    return guarded_open


def _require_inside(root: str, name: str, path, dir_fd, follow: bool) -> None:
    """Raise PermissionError unless ``path`` (resolved like the kernel would) lies inside ``root``."""
    if path is None or isinstance(path, int):  # a missing argument or an already open descriptor
        return
    text = os.fsdecode(os.fspath(path))
    if dir_fd is not None and not os.path.isabs(text):
        text = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), text)
    if follow:
        real = os.path.realpath(text)
    else:  # the operation acts on the link itself, so only its directory is resolved
        real = os.path.join(os.path.realpath(os.path.dirname(text) or "."), os.path.basename(text))
    if real != root and not real.startswith(root + os.sep) and real not in _ALWAYS_WRITABLE:
        raise PermissionError(
            f"sandbox: {name}({text!r}) would write outside the sandbox directory {root}; "
            "generated code may only write inside its working directory"
        )


if __name__ == "__main__":
    _boot(sys.argv[1:])
