"""Shared by the system tests: Khalti's real widget package (npm ``khalti-checkout-web``).

``$KHALTI_CHECKOUT_WEB`` (its unpacked ``package/`` directory, as `.ci/run` leaves it),
else ``npm pack`` into a temporary directory. Without npm the tests that need it are
skipped, never in CI.
"""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import NoReturn

import pytest

PACKAGE = "khalti-checkout-web@2.2.0"


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
