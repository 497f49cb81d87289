"""The reliability rig: the testproject under gunicorn (4 worker processes) on the
test database pytest-django created, talking to a :class:`~tests.fake_khalti.FakeKhalti`
on another loopback port.

Everything listens on 127.0.0.1. The server stops at the end of its ``with``
block (SIGTERM, then SIGKILL of the whole process group), the fake with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TESTPROJECT = ROOT / "testproject"
BIN = Path(sys.executable).parent

#: KHALTI["TIMEOUT"] on the rig's server, seconds.
TIMEOUT = 2.0
WORKERS = 4


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest dies, however it dies (Linux)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_gunicorn(
    app: str,
    *,
    chdir: Path,
    env: dict[str, str],
    log,
    workers: int = WORKERS,
    log_level: str,
    worker_timeout: int = 60,
    threads: int = 1,
) -> tuple[subprocess.Popen, str]:
    """gunicorn with ``workers`` sync workers (``--preload``) serving ``app``, on a
    loopback socket bound here and handed over (fd://: no race for a free port), in a
    session of its own and dying with its parent. Returns the process and its URL.
    ``threads`` > 1: gthread workers with that many threads each (the benchmark)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with listener:
        process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                app,
                "--chdir",
                str(chdir),
                "--bind",
                f"fd://{listener.fileno()}",
                "--workers",
                str(workers),
                "--worker-class",
                "gthread" if threads > 1 else "sync",
                "--threads",
                str(threads),
                "--timeout",
                str(worker_timeout),
                "--graceful-timeout",
                "3",
                "--preload",
                "--log-level",
                log_level,
            ],
            env=env,
            pass_fds=[listener.fileno()],
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return process, url


class Rig:
    """A running gunicorn serving the testproject; ``post`` talks to it."""

    def __init__(
        self,
        database_name: str,
        khalti_url: str,
        workdir: Path,
        *,
        workers: int = WORKERS,
        worker_timeout: int = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        """``workers`` sync workers, killed by gunicorn after ``worker_timeout`` seconds
        on one request; ``env``: more of the server's environment."""
        self.workdir = workdir
        self.workers = workers
        self.worker_timeout = worker_timeout
        self.log_file = workdir / "django.log"
        self.server_log = workdir / "gunicorn.log"
        self.fail_settle_marker = workdir / "fail-settle"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DJANGO_DATABASE_NAME": database_name,
            "KHALTI_BASE_URL": khalti_url,
            "KHALTI_TIMEOUT": str(TIMEOUT),
            "DJANGO_LOG_FILE": str(self.log_file),
            "TESTPROJECT_FAIL_SETTLE_IF": str(self.fail_settle_marker),
            "PYTHONPATH": os.pathsep.join([str(TESTPROJECT), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("DJANGO_DEMO", None)
        self.env.pop("KHALTI_SECRET_KEY", None)  # the fake knows the testproject's key
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.session = requests.Session()

    def __enter__(self) -> Rig:
        with open(self.server_log, "ab") as log:
            self.process, self.url = spawn_gunicorn(
                "testproject.wsgi:application",
                chdir=TESTPROJECT,
                env=self.env,
                log=log,
                log_level="info",
                workers=self.workers,
                worker_timeout=self.worker_timeout,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def _wait_ready(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.server_log.read_text()[-3000:]}")
            if len(self.worker_pids()) == self.workers:
                try:
                    requests.get(self.url + "/khalti/verify/", timeout=2)
                    return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not start: {self.server_log.read_text()[-3000:]}")

    # --- talking to it ----------------------------------------------------------------

    def post(
        self,
        payload: object,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, object, float]:
        """POST to the verify view: (status, JSON body or text, seconds it took).

        A fresh connection each time (no keep-alive: sync workers close them anyway)."""
        data = raw if raw is not None else json.dumps(payload).encode()
        started = time.monotonic()
        response = requests.post(
            self.url + "/khalti/verify/",
            data=data,
            timeout=timeout,
            headers={"Content-Type": content_type},
        )
        took = time.monotonic() - started
        try:
            body: object = response.json()
        except ValueError:
            body = response.text
        return response.status_code, body, took

    def manage(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``manage.py <args>`` in a subprocess with the server's environment."""
        return subprocess.run(
            [sys.executable, str(TESTPROJECT / "manage.py"), *args],
            env=self.env,
            cwd=TESTPROJECT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def reconcile(self) -> subprocess.CompletedProcess:
        return self.manage("khalti_reconcile", "--older-than", "0")

    # --- its processes -------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        if self.process is None:
            return []
        pids = []
        for task in Path(f"/proc/{self.process.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        return pids

    def worker_with_connection_from(self, port: int) -> int | None:
        """The worker owning the loopback socket whose local port is ``port`` (the
        connection it opened to the fake Khalti)."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port:
                    inodes.add(fields[9])
        for pid in self.worker_pids():
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    try:
                        link = os.readlink(fd)
                    except OSError:
                        continue
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return pid
            except OSError:
                continue
        return None
