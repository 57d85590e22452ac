"""Private PostgreSQL and nats-server instances for the cluster tests (issue 13): real engines, no mocks.

Each is started once per test session on a free loopback port in a temporary folder and stopped at
the end. Where the binaries are missing the tests that need them skip with one line naming the
Debian packages (`.ci/run` installs them, so CI always runs these tests).

PostgreSQL refuses to run as root, and CI runs as root: the instance then runs as the `postgres`
system user that the Debian package creates (`runuser -u postgres -- ...`), in a folder it owns.
Authentication is `trust`, and the server listens on 127.0.0.1 and a socket in its own folder only.

Registered as a pytest plugin by tests/conftest.py; the fixtures:
- `pg_server` (session): the running instance (`url(dbname)`, `stop()`, `start()`);
- `pg_url` (function): a fresh, empty database of its own for one test, as a URL;
- `nats_server` (session): the running nats-server (`url`, `stop()`, `start()`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The one line a skipped cluster test prints.
MISSING = "cluster tests need PostgreSQL and nats-server: apt-get install postgresql nats-server"
#: Seconds to wait for an engine to accept connections (a loaded 2-core CI machine).
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_binaries() -> Path | None:
    """Debian keeps initdb and pg_ctl off PATH, in /usr/lib/postgresql/VERSION/bin; the newest wins."""
    if os.environ.get("SECURECOMM_PG_BIN"):
        return Path(os.environ["SECURECOMM_PG_BIN"])
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


class PostgresServer:
    """One private PostgreSQL cluster: initdb once, then start/stop as a test needs."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="securecomm-pg-"))
        self.data, self.sockdir, self.logfile = self.root / "data", self.root / "sock", self.root / "log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            self._as = ["runuser", "-u", "postgres", "--"]
            self.root.chmod(0o700)
            shutil.chown(self.root, "postgres", "postgres")
        self._run(self.bin_dir / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        self._run("mkdir", "-m", "0700", str(self.sockdir))
        self._names = itertools.count(1)
        self._lock = threading.Lock()

    def _run(self, *argv: str | Path) -> None:
        subprocess.run([*self._as, *map(str, argv)], check=True, capture_output=True, timeout=START_TIMEOUT)

    def start(self) -> None:
        """Start and wait until it accepts connections (`pg_ctl -w`)."""
        options = f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run(self.bin_dir / "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w",
                  "-t", str(START_TIMEOUT), "-o", options, "start")

    def stop(self) -> None:
        self._run(self.bin_dir / "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        with self._lock:
            name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')  # a generated name: no outside input
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class NatsServer:
    """One private nats-server on a loopback port (core pub/sub; no JetStream)."""

    def __init__(self, binary: str) -> None:
        self.binary, self.port = binary, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait for its "Server is ready" log line (an event, not a sleep)."""
        self.proc = subprocess.Popen([self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        ready, lines = threading.Event(), []

        def pump() -> None:
            assert self.proc and self.proc.stderr
            for raw in self.proc.stderr:
                lines.append(raw.decode(errors="replace"))
                if "Server is ready" in lines[-1]:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError("nats-server did not start:\n" + "".join(lines))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=START_TIMEOUT)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    bin_dir = _pg_binaries()
    if bin_dir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip(MISSING)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("cluster tests need the cluster extra: pip install -e '.[test]'")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.new_database()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    binary = shutil.which("nats-server")
    if binary is None:
        pytest.skip(MISSING)
    server = NatsServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
