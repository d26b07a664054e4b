"""Worker processes started from Python: for the demo, the tests and the benchmarks.

A worker is always a separate ``orchestrator worker`` process (exactly-once holds only under
``faust.Worker``, which owns its event loop), started with its own data directory and web port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.config import Settings
from streams.errors import InfrastructureError

READY_LINE = "[^Worker]: Ready"

STOP_MARGIN_S = 30.0
"""How long :meth:`WorkerProcess.stop` waits beyond the worker's ``shutdown_grace`` (the
handlers' drain) before SIGKILL: the fold's last commit, leaving the group, closing."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class WorkerProcess:
    """A running ``orchestrator worker`` and where its output goes."""

    process: subprocess.Popen[bytes]
    log_file: Path
    web_port: int
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    log_offset: int = 0
    """Size of the log file when this process started: older lines are a previous run's."""

    @property
    def api_url(self) -> str:
        """The worker's HTTP API."""
        return f"http://127.0.0.1:{self.web_port}"

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the worker's log."""
        text = self.log_file.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until this process logs that it is ready.

        Raises:
            InfrastructureError: the worker exited or did not get ready in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InfrastructureError(
                    f"worker exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with self.log_file.open("rb") as log:
                log.seek(self.log_offset)
                if READY_LINE.encode() in log.read():
                    return
            time.sleep(0.1)
        raise InfrastructureError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    @property
    def shutdown_grace_s(self) -> float:
        """The worker's ``shutdown_grace`` as its environment sets it (else the default).

        A grace set only in a ``--config`` file is not seen here: pass ``stop`` a timeout.
        """
        raw = self.env.get("ORCHESTRATOR_SHUTDOWN_GRACE", "")
        try:
            return float(raw) if raw else Settings.shutdown_grace
        except ValueError:
            return Settings.shutdown_grace

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM, wait, then SIGKILL; return the exit code.

        The default wait is the worker's ``shutdown_grace`` plus :data:`STOP_MARGIN_S`: a
        worker stopped with SIGTERM lets its running handlers finish first (up to the grace),
        and a shorter wait would kill it mid-drain.
        """
        if timeout_s is None:
            timeout_s = self.shutdown_grace_s + STOP_MARGIN_S
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or clean up."""
        self.process.kill()
        self.process.wait()


def start_worker(
    bootstrap_servers: str,
    data_dir: Path,
    web_port: int,
    settings: dict[str, str] | None = None,
    log_file: Path | None = None,
    extra_args: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Start ``orchestrator worker`` in a new process; settings go in ``ORCHESTRATOR_*`` vars."""
    data_dir = data_dir.resolve()  # the worker runs in it: relative paths would move
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_file or data_dir / "worker.log"
    env = dict(os.environ)
    env.update({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in (settings or {}).items()})
    env.update(extra_env or {})
    command = [
        sys.executable,
        "-m",
        "streams",
        "worker",
        "--broker",
        bootstrap_servers,
        "--web-port",
        str(web_port),
        "--data-dir",
        str(data_dir),
        *extra_args,
    ]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir
        )
    return WorkerProcess(process, log_file, web_port, data_dir, env)
