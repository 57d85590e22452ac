"""Processes the benchmarks drive: the real server, the echo baseline, ncat --broker."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import entry_point

PASSWORD = "benchmark password"


def raise_fd_limit(want: int = 8192) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(max(soft, want), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Proc:
    """A subprocess whose stderr/stdout is scanned for a 'port' line."""

    def __init__(self, cmd: list[str], pattern: str, stream: str = "stderr") -> None:
        self.cmd, self.pattern, self.stream = cmd, pattern, stream
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.lines: list[str] = []

    def start(self, timeout: float = 30) -> Proc:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready = threading.Event()
        pipe = self.proc.stderr if self.stream == "stderr" else self.proc.stdout

        def pump() -> None:
            assert pipe is not None
            for raw in pipe:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                m = re.search(self.pattern, line)
                if m and not ready.is_set():
                    self.port = int(m.group(1))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.cmd[0]} did not start: {''.join(self.lines)[-2000:]}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def securecomm(home: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run([entry_point(), "--home", str(home), *args], input=input, capture_output=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"securecomm {' '.join(args)} failed: {r.stderr.decode()}")
    return r


def start_server(home: Path, *extra: str, serve_version_1: bool = False) -> Proc:
    """`securecomm serve`; with `serve_version_1`, the same command with ServerConfig.serve_version_1 on
    (benchmarks/serve_v1.py: a version-1 baseline beside version 2 in one run, no CLI option for it)."""
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "serve_v1.py")] if serve_version_1 \
        else [entry_point()]
    return Proc([*cmd, "--home", str(home), "serve", "--port", "0", *extra],
                r"listening on 127\.0\.0\.1:(\d+)").start()


def start_echo(home: Path) -> Proc:
    here = Path(__file__).resolve().parent
    return Proc([sys.executable, str(here / "tls_echo.py"), str(home / "tls" / "server.pem"),
                 str(home / "tls" / "server.key")], r"^(\d+)$", stream="stdout").start()


def ncat_path() -> str | None:
    return shutil.which("ncat")


def start_ncat_broker(home: Path, port: int) -> subprocess.Popen[bytes]:
    ncat = ncat_path()
    assert ncat
    proc = subprocess.Popen([ncat, "--ssl", "--ssl-cert", str(home / "tls" / "server.pem"), "--ssl-key",
                             str(home / "tls" / "server.key"), "--broker", "-m", "200", "-l", "127.0.0.1", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_description() -> str:
    import platform

    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}")
