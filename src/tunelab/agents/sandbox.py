"""The ``python`` tool's sandbox: model-written code runs in a separate process, with
limits, in namespaces of its own.

Limits (rlimits, and the parent's watch): CPU seconds, address space, open files, file
size, processes (counted in the sandbox's own user namespace), wall-clock time and output
size; the parent kills the whole process group. An empty environment (no API keys, no
tokens), an isolated interpreter (``-I``), a fresh empty working directory.

Namespaces (unprivileged user namespaces, ``unshare`` from util-linux):
- no network: a network namespace of its own with no interface up;
- no other processes: a PID namespace and its own ``/proc``; everything the program
  starts dies with it;
- no user files: every top-level directory except the system's (``/usr``, ``/lib*``,
  ``/bin``, ``/sbin``, ``/etc``, ``/proc``, ``/sys``) is an empty, read-only tmpfs
  (``/home``, ``/root``, ``/run``, ``/var``, ``/opt``, the project's), ``/tmp`` a small
  writable one, ``/dev`` holds only null, zero, full, random and urandom (no shared
  memory, no terminals), ``/etc/passwd``, ``shadow`` and ``group`` read empty; the
  interpreter's own directory is bound back read-only; the mounts are then locked by
  entering a nested user namespace, so the program cannot unmount them.

Where the OS has no user namespaces (macOS; Ubuntu 24.04's AppArmor restriction) it
refuses to run, unless ``isolate`` is off: then only the limits apply (and a process that
leaves the group can outlive the run). It is not a VM: the program shares the kernel and
can read what the system directories hold; kernel exploits are out of scope.
``isolation`` in every result says what applied.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

KEEP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "sys")
DEVICES = ("null", "zero", "random", "urandom", "full")
MASK = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow")
UNSHARE = ("--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")
SANDBOX_ERROR = 70  # the bootstrap's exit code when it cannot set the sandbox up: fail closed

# Runs first inside the namespaces: hide, mask, lock (a nested user namespace makes the
# mounts above unremovable), then run the program as __main__ in the fresh /tmp.
BOOTSTRAP = r"""
import ctypes, json, os, resource, signal, sys
config, code = json.loads(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def fail(what):
    sys.stderr.write("sandbox: cannot " + what + ": " + os.strerror(ctypes.get_errno()) + "\n")
    sys.exit(70)
def mount(source, target, fstype, flags, data, what):
    if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                  data and data.encode()):
        fail(what + " " + target)
NOSUID, NODEV, RDONLY, REMOUNT, BIND, REC = 2, 4, 1, 32, 4096, 16384
# reachable by descriptor after the directories holding them are hidden
kept = {path: os.open(path, os.O_PATH) for path in config["keep"]}
devices = {name: os.open("/dev/" + name, os.O_PATH) for name in config["devices"] if os.path.exists("/dev/" + name)}
for path in config["hide"]:
    scratch = path == "/tmp"
    mount("tmpfs", path, "tmpfs", NOSUID | NODEV, config["tmp"] if scratch else "size=64k,mode=755", "hide")
for name, fd in devices.items():  # a /dev of null, zero, random, urandom only: no shm, pts or mqueue
    open("/dev/" + name, "w").close()
    mount("/proc/self/fd/%d" % fd, "/dev/" + name, None, BIND, None, "keep")
for path, fd in kept.items():
    if any(path.startswith(hidden + "/") for hidden in config["hide"]):
        os.makedirs(path, exist_ok=True)
        mount("/proc/self/fd/%d" % fd, path, None, BIND | REC, None, "keep")
        mount(None, path, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV, None, "make read-only")
for path in config["mask"]:
    if os.path.exists(path):
        mount("/dev/null", path, None, BIND, None, "mask")
for path in config["hide"]:  # empty and read-only, but the scratch /tmp
    if path != "/tmp":
        mount(None, path, None, REMOUNT | RDONLY | NOSUID | NODEV, None, "make read-only")
if libc.unshare(0x10000000 | 0x00020000):  # CLONE_NEWUSER | CLONE_NEWNS: the mounts above are now locked
    fail("lock the mounts")
# counted in this user namespace only (Linux >= 5.14), not against the user's other processes
resource.setrlimit(resource.RLIMIT_NPROC, (config["processes"], config["processes"]))
def out_of_cpu(*_):
    sys.stderr.write("\nsandbox: cpu time limit\n")
    os._exit(152)
signal.signal(signal.SIGXCPU, out_of_cpu)
os.chdir("/tmp")
sys.argv[:] = ["<program>"]
sys.path[:] = [p for p in sys.path if p and os.path.isdir(p)]
program = compile(code, "<program>", "exec")
del config, code, libc, fail, mount, kept, devices
exec(program, {"__name__": "__main__"})
"""


@dataclass
class SandboxLimits:
    """What one program may use; each limit stops it with a clear reason."""

    cpu_seconds: int = field(default=5, metadata={"help": "CPU time (RLIMIT_CPU)."})
    wall_seconds: float = field(default=10.0, metadata={"help": "Wall-clock time, enforced by the parent."})
    memory_mb: int = field(default=1024, metadata={"help": "Address space (RLIMIT_AS)."})
    output_bytes: int = field(default=16_384, metadata={"help": "stdout and stderr kept, each; more stops it."})
    open_files: int = field(default=64, metadata={"help": "Open file descriptors (RLIMIT_NOFILE)."})
    file_size_mb: int = field(default=16, metadata={"help": "Largest file it may write (RLIMIT_FSIZE)."})
    processes: int = field(default=16, metadata={
        "help": "Processes and threads (RLIMIT_NPROC, counted in its own user namespace)."})
    isolate: bool = field(default=True, metadata={
        "help": "Run in namespaces (no network, no user files, no other processes); where the OS has none, refuse "
        "to run. --no-isolate runs with the limits only."})


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    stopped: str | None  # why it was stopped: "wall time", "cpu time", "output", "memory", or None
    seconds: float
    isolation: str  # what applied: "namespaces" or "limits only (...)"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.stopped is None

    def observation(self) -> str:
        """What the agent sees: what the program printed, and why it failed if it did."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stopped == "sandbox set-up":
            parts.append(_last_lines(self.stderr, 2))
        elif self.stopped:
            parts.append(f"[stopped: {self.stopped} limit]")
        elif self.exit_code:
            parts.append(_last_lines(self.stderr, 8) or f"[exit code {self.exit_code}]")
        return "\n".join(parts) if parts else "[no output]"


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


@functools.cache
def namespaces_available() -> bool:
    """Whether ``unshare`` can create the namespaces here (unprivileged user namespaces
    may be disabled, e.g. by AppArmor on Ubuntu 24.04)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", *UNSHARE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def hidden_directories() -> list[str]:
    """Top-level directories to replace with an empty tmpfs: all but the system's."""
    return sorted(f"/{name}" for name in os.listdir("/")
                  if name not in KEEP and os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}"))


def interpreter_directories() -> list[str]:
    """What the interpreter needs after it started (its standard library), bound back
    read-only where a hidden directory holds it (e.g. ~/.pyenv under /root)."""
    return sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` as a program; what it printed and how it ended. With ``isolate`` (the
    default) and no namespaces on this OS it refuses, rather than run unisolated."""
    limits = limits or SandboxLimits()
    if limits.isolate and not namespaces_available():
        return SandboxResult("", "sandbox: user namespaces are not available here, so the program was not run "
                             "(isolate: false runs it with the limits only)", None, "sandbox set-up", 0.0, "none")
    with tempfile.TemporaryDirectory(prefix="tunelab-sandbox-") as workdir:
        if limits.isolate:
            config = {"hide": hidden_directories(), "keep": interpreter_directories(), "mask": list(MASK),
                      "devices": list(DEVICES), "processes": limits.processes,
                      "tmp": f"size={max(limits.file_size_mb * 2, 8)}m,mode=1777"}
            command = [shutil.which("unshare") or "unshare", *UNSHARE, sys.executable, "-I", "-u", "-X", "utf8", "-c",
                       BOOTSTRAP, json.dumps(config), code]
        else:
            command = [sys.executable, "-I", "-u", "-X", "utf8", "-c", code]
        try:
            result = _supervise(command, limits, workdir)
        except (OSError, ValueError, subprocess.SubprocessError) as error:  # e.g. a NUL byte in the code
            return SandboxResult("", f"sandbox: cannot start the program: {error}", None, "sandbox set-up", 0.0,
                                 "none")
    if limits.isolate and result.exit_code == SANDBOX_ERROR and result.stderr.startswith("sandbox: "):
        result.stopped = "sandbox set-up"
    result.isolation = "namespaces" if limits.isolate else "limits only (isolate off)"
    return result


def _supervise(command: list[str], limits: SandboxLimits, workdir: str) -> SandboxResult:
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=workdir, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=functools.partial(_set_limits, limits))
    out, err, stopped = bytearray(), bytearray(), None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, out)
    selector.register(process.stderr, selectors.EVENT_READ, err)
    deadline = started + limits.wall_seconds
    while selector.get_map() and stopped is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stopped = "wall time"
            break
        for key, _ in selector.select(timeout=min(remaining, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            key.data.extend(chunk)
            if len(key.data) > limits.output_bytes:
                stopped = "output"
    _kill_group(process)
    exit_code = process.wait()
    selector.close()
    process.stdout.close()
    process.stderr.close()
    stderr = err[: limits.output_bytes].decode("utf-8", "replace")
    if stopped is None and (exit_code in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU)
                            or "sandbox: cpu time limit" in stderr):
        stopped = "cpu time"
    elif stopped is None and "unshare: sigprocmask unblock failed" in stderr:
        stopped = "signal"  # killed by a signal (the hard CPU limit, or its own); unshare cannot say which
    elif stopped is None and exit_code and "MemoryError" in stderr:
        stopped = "memory"
    return SandboxResult(out[: limits.output_bytes].decode("utf-8", "replace"), stderr,
                         None if stopped in ("wall time", "output") else exit_code, stopped,
                         time.monotonic() - started, "")


def _set_limits(limits: SandboxLimits) -> None:
    """In the child, before exec: the rlimits (inherited by everything it starts)."""
    import resource

    def cap(which: int, value: int) -> None:
        resource.setrlimit(which, (value, value))

    # SIGXCPU at the limit (the program stops with a message), SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    cap(resource.RLIMIT_AS, limits.memory_mb * 2**20)
    cap(resource.RLIMIT_NOFILE, limits.open_files)
    cap(resource.RLIMIT_FSIZE, limits.file_size_mb * 2**20)
    cap(resource.RLIMIT_CORE, 0)


def _kill_group(process: subprocess.Popen) -> None:
    """The program and everything it started (its own session; in a PID namespace, the
    namespace dies with its first process)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
