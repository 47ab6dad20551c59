"""The python tool's sandbox, attacked: every escape below is stopped or contained, and
comes back as an observation (the agent never crashes). Limits are small so each attack
takes at most a few seconds."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tunelab.agents.sandbox import SandboxLimits, namespaces_available, run_python
from tunelab.agents.tools import make_tools

FAST = SandboxLimits(cpu_seconds=2, wall_seconds=4, memory_mb=512, output_bytes=4096)


def run(code: str, **limits):
    return run_python(code, SandboxLimits(**{**FAST.__dict__, **limits}))


def test_namespaces_are_available_on_linux():
    # CI runs on Linux; without user namespaces the isolation tests below would test less
    assert not sys.platform.startswith("linux") or namespaces_available(), \
        "unprivileged user namespaces are disabled: the sandbox falls back to limits only"


def test_a_program_runs_and_prints():
    result = run("import math\nprint(math.comb(10, 3))")
    assert result.ok and result.stdout == "120\n" and result.observation() == "120"
    assert result.isolation == "namespaces"


def test_errors_are_observations():
    result = run("print('before')\n1/0")
    assert not result.ok and result.exit_code == 1
    assert "before" in result.observation() and "ZeroDivisionError" in result.observation()
    assert run("pass").observation() == "[no output]"


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-do-not-leak")
    result = run("import os; print(sorted(os.environ.items()))")
    assert "sk-secret" not in result.stdout and "OPENAI_API_KEY" not in result.stdout


def test_user_files_are_hidden(tmp_path):
    secret = tmp_path / "secret.txt"  # under /tmp, which the sandbox replaces
    secret.write_text("the user's secret")
    home = os.path.expanduser("~")
    code = (f"import os\nprint(repr(open('/etc/passwd').read()))\n"
            f"print(os.path.exists({str(secret)!r}))\n"
            f"print([n for n in os.listdir({home!r}) if not n.startswith('.pyenv')])\n"
            f"print(os.path.exists({os.getcwd()!r} + '/pyproject.toml'))\n"
            f"print(sorted(os.listdir('/proc'))[0])")
    result = run(code)
    lines = result.stdout.splitlines()
    assert result.ok and lines[0] == "''"  # /etc/passwd reads empty
    assert lines[1:4] == ["False", "[]", "False"]  # /tmp, the home folder and the project are empty
    assert lines[4] == "1"  # its own PID namespace: the only process is itself


def test_mounts_cannot_be_removed():
    home = os.path.expanduser("~")
    result = run(f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 f"print(libc.umount2({home!r}.encode(), 2), libc.umount2(b'/etc/passwd', 2))\n"
                 f"print(repr(open('/etc/passwd').read()))")
    assert result.stdout.splitlines() == ["-1 -1", "''"]


def test_no_network_even_to_a_server_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')")
        assert "connected" not in result.stdout and "Error" in result.observation()
        dns = run("import socket\nprint(socket.getaddrinfo('pypi.org', 443))")
        assert not dns.ok and "gaierror" in dns.observation()
        time.sleep(0.2)
        assert accepted == []
    finally:
        server.close()


def test_sleeping_forever_is_stopped_by_wall_time():
    result = run("import time\ntime.sleep(1000)", wall_seconds=1)
    assert result.stopped == "wall time" and result.seconds < 5
    assert result.observation() == "[stopped: wall time limit]"


def test_spinning_is_stopped_by_cpu_time():
    result = run("while True:\n    pass", cpu_seconds=1, wall_seconds=10)
    assert result.stopped == "cpu time" and result.seconds < 5


def test_ten_gigabytes_are_refused():
    result = run("x = bytearray(10 * 2**30)\nprint('allocated')")
    assert result.stopped == "memory" and "allocated" not in result.stdout


def test_printing_a_gigabyte_is_cut_off():
    started = time.monotonic()
    result = run("import sys\nfor _ in range(2**14):\n    sys.stdout.write('x' * 2**16)")
    assert result.stopped == "output" and len(result.stdout) <= FAST.output_bytes
    assert time.monotonic() - started < 5


def test_writing_a_huge_file_is_refused():
    result = run("open('big', 'wb').write(b'x' * (64 * 2**20))", file_size_mb=1)
    assert not result.ok and "File too large" in result.observation()


def test_a_fork_bomb_is_contained():
    marker = uuid.uuid4().hex
    result = run(f"# {marker}\nimport os\nwhile True:\n    os.fork()", wall_seconds=2)
    assert result.stopped in ("wall time", "cpu time", "signal") or not result.ok
    deadline = time.monotonic() + 15  # nothing it started outlives it (the kernel reaps a PID namespace
    while time.monotonic() < deadline:  # asynchronously: thousands of processes take a moment under load)
        left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.2)
    assert left == []


def test_the_tool_reports_instead_of_raising():
    tools = make_tools(["python"], limits=FAST)
    observation = tools["python"]({"code": "import time\ntime.sleep(100)"})
    assert observation.error is None and "[stopped: wall time limit]" in observation.text
    bad = tools["python"]({"program": "print(1)"})
    assert bad.error == "arguments" and "'code' is a required property" in bad.text


def test_without_namespaces_limits_still_apply():
    result = run("import os\nprint(os.getcwd().startswith('/tmp/tunelab-sandbox-'))\nwhile True: pass",
                 isolate=False, cpu_seconds=1, wall_seconds=10)
    assert result.isolation.startswith("limits only") and result.stdout == "True\n"
    assert result.stopped == "cpu time"


def test_dev_holds_only_the_harmless_devices():
    result = run("import os\nprint(sorted(os.listdir('/dev')))\n"
                 "open('/dev/null', 'w').write('x')\nprint(len(open('/dev/urandom', 'rb').read(8)))\n"
                 "try:\n    open('/dev/shm/probe', 'w')\nexcept OSError as e:\n    print(type(e).__name__)")
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["['full', 'null', 'random', 'urandom', 'zero']", "8", "FileNotFoundError"]


def test_hidden_directories_are_read_only_and_tmp_is_small():
    # /tmp holds twice the file size limit: three files just under the limit do not fit
    result = run("import os\ntry:\n    open('/opt/x', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
                 "try:\n    for n in range(3):\n        open(f'/tmp/f{n}', 'wb').write(b'x' * (15 * 2**20))\n"
                 "except OSError as e:\n    print(e.errno)", file_size_mb=16)
    assert result.stdout.splitlines() == ["30", "28"], result.stderr  # EROFS, then ENOSPC


def test_a_nul_byte_or_bad_limits_are_observations():
    result = run("print('a')\x00")
    assert result.stopped == "sandbox set-up" and "cannot start" in result.observation()


def test_without_namespaces_it_refuses_unless_told(monkeypatch):
    import tunelab.agents.sandbox as sandbox

    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    result = sandbox.run_python("print(1)", FAST)
    assert result.stopped == "sandbox set-up" and result.stdout == "" and "not available" in result.observation()


def test_process_limit_as_an_ordinary_user():
    """As a non-root user (root is exempt from RLIMIT_NPROC): the sandbox runs, and its
    process limit counts its own processes only, not the user's others."""
    import shutil
    import tempfile
    from pathlib import Path

    from tunelab.agents import sandbox

    copy = Path(tempfile.mkdtemp(prefix="tunelab-nr-"))  # directly under /tmp: others can reach it
    copy.chmod(0o755)
    shutil.copy(sandbox.__file__, copy / "sandbox.py")  # stdlib only: importable without tunelab
    (copy / "sandbox.py").chmod(0o644)
    program = ("import os\nn = 0\ntry:\n    for i in range(64):\n        if os.fork() == 0:\n"
               "            import time; time.sleep(2); os._exit(0)\n        n += 1\n"
               "except OSError as e:\n    print('fork failed after', n, type(e).__name__)\n")
    script = (f"import sys; sys.path.insert(0, {str(copy)!r}); import sandbox\n"
              f"r = sandbox.run_python({program!r}, sandbox.SandboxLimits(processes=8, wall_seconds=10))\n"
              "print(r.isolation); print(r.stdout, end='')")
    if os.geteuid() == 0:  # the interpreter under /root is not readable by others: the system one
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script]
    else:
        command = [sys.executable, "-c", script]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=60)
    finally:
        shutil.rmtree(copy)
    assert done.stdout.splitlines() == ["namespaces", "fork failed after 7 BlockingIOError"], done.stderr
