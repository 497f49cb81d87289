"""Shared by the system tests: the demo server and Chromium for the browser tests, and
Khalti's real widget package (npm ``khalti-checkout-web``).

``$KHALTI_CHECKOUT_WEB`` (its unpacked ``package/`` directory, as `.ci/run` leaves it),
else ``npm pack`` into a temporary directory. Without npm the tests that need it are
skipped, never in CI.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

PACKAGE = "khalti-checkout-web@2.2.0"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "browser"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_demo(
    tmp_path_factory, name: str, settings_module: str = "testproject.settings"
) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo server on a fresh, seeded SQLite database and the offline sandbox; yields
    its base URL and its environment (for ``manage.py`` beside it). Its log is
    ``artifacts/browser/<name>.log``."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_DEMO": "1",
        "DJANGO_DEMO_ADDR": f"127.0.0.1:{port}",
        "DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": settings_module,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
    }
    for key in ("KHALTI_SECRET_KEY", "KHALTI_PUBLIC_KEY", "KHALTI_BASE_URL"):
        env.pop(key, None)  # always the offline sandbox here
    manage = [sys.executable, str(ROOT / "testproject" / "manage.py")]
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        subprocess.run(manage + command, env=env, check=True, capture_output=True, timeout=120)
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = SHOTS / f"{name}.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            if server.poll() is not None:
                raise RuntimeError(f"the demo server exited:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the demo server did not start:\n{log.read_text()[-3000:]}")
        yield base, env
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, for a module's tests."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the real widget's tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def widget_dist(tmp_path_factory):
    """The ``dist/`` directory of Khalti's npm package."""
    given = os.environ.get("KHALTI_CHECKOUT_WEB")
    if given:
        dist = Path(given) / "dist"
        if not (dist / "khalti-checkout.iffe.js").is_file():
            pytest.fail(f"KHALTI_CHECKOUT_WEB={given} is not khalti-checkout-web's package/")
        return dist
    npm = shutil.which("npm")
    if not npm:
        unavailable(f"npm is not installed (.ci/run installs it and packs {PACKAGE})")
    where = tmp_path_factory.mktemp("npm")
    packed = subprocess.run(
        [npm, "pack", PACKAGE, "--silent", "--pack-destination", str(where)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    tarballs = list(where.glob("khalti-checkout-web-*.tgz"))
    if packed.returncode or not tarballs:
        unavailable(f"npm pack {PACKAGE} failed: {packed.stderr.strip()[-500:]}")
    with tarfile.open(tarballs[0]) as tarball:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12 and later
            tarball.extractall(where, filter="data")
        else:
            tarball.extractall(where)  # npm's own tarball
    return where / "package" / "dist"
