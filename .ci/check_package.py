"""The distributions a release would upload, checked (`tox -e package` runs this).

1. ``python -m build`` on a clean export of the source tree (git's files, committed or
   new): the sdist, and the wheel built from that sdist.
2. ``twine check --strict`` on both; every classifier one PyPI accepts.
3. Both hold every such file of ``django_khalti/`` (migrations, templates, static files,
   locale files, ``py.typed``), a compiled ``.mo`` beside each ``.po``, and nothing of
   ``tests/``, ``testproject/`` or ``bench/``.
4. A fresh virtualenv of this interpreter gets the wheel with its ``test`` extra (and the
   database driver DATABASE_URL needs), within the ``--pin`` requirements if any; the suite,
   copied away from any source of the package, runs there, and ``.ci/installed_wheel.py``
   fails that run unless the ``django_khalti`` the tests imported is the one installed in
   the virtualenv's site-packages.

Usage: python .ci/check_package.py [--pin REQUIREMENT]... [pytest arguments]
(``--pin "Django>=5.2,<5.3"``: the suite runs on a Django of that range; pytest's
arguments default to none, the whole suite: browser and reliability tests included.
tox.ini's ``package`` environment pins its oldest combination.)
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "django_khalti"
FORBIDDEN = {"tests", "testproject", "bench"}
DEFAULT_PYTEST_ARGS: list[str] = []
#: Printed by the virtualenv the suite runs in: what it runs on.
VERSIONS = (
    "import platform, django, rest_framework; "
    "print('the suite runs on Python', platform.python_version(), "
    "'Django', django.__version__, 'DRF', rest_framework.VERSION)"
)


def fail(message: str) -> None:
    sys.exit(f"check_package: {message}")


def run(*command, **kwargs) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    if subprocess.run([str(part) for part in command], **kwargs).returncode:
        fail(f"failed: {' '.join(str(part) for part in command)}")


def source_files() -> list[str]:
    """The project's files as git sees them (committed or new, not ignored), from its root."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listing.split("\0") if name and (ROOT / name).is_file()})


def export(files: list[str], destination: Path) -> None:
    """The source tree without what a build or a run left in it (build/, egg-info, caches):
    a stale build/ or SOURCES.txt would otherwise leak into the distributions."""
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def check_contents(kind: str, names: set[str], expected: set[str]) -> None:
    """``names``: the distribution's files, as paths from the project root."""
    problems = []
    missing = sorted(expected - names)
    if missing:
        problems.append("missing: " + ", ".join(missing))
    strays = sorted(name for name in names if FORBIDDEN & set(name.split("/")))
    if strays:
        problems.append("must not ship: " + ", ".join(strays))
    shipped = {name for name in names if name.startswith(PACKAGE + "/")}
    required = {
        "py.typed": {f"{PACKAGE}/py.typed"} & shipped,
        "migration": {n for n in shipped if n.startswith(f"{PACKAGE}/migrations/0")},
        "template": {n for n in shipped if n.startswith(f"{PACKAGE}/templates/")},
    }
    problems += [f"holds no {what}" for what, found in required.items() if not found]
    uncompiled = sorted(
        name for name in shipped if name.endswith(".po") and name[:-3] + ".mo" not in shipped
    )
    if uncompiled:
        problems.append("a catalog without its compiled .mo: " + ", ".join(uncompiled))
    if problems:
        fail(f"the {kind}: " + "; ".join(problems))
    print(f"the {kind}: {len(shipped)} files of {PACKAGE}/, nothing of {sorted(FORBIDDEN)}")


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = {name for name in archive.namelist() if not name.endswith("/")}
    outside = sorted(n for n in names if n.split("/")[0] not in {PACKAGE, dist_info(wheel)})
    if outside:
        fail(f"the wheel holds files outside {PACKAGE}/ and its metadata: {outside}")
    return names


def dist_info(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info"


def check_classifiers(wheel: Path) -> None:
    from trove_classifiers import classifiers as known

    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{dist_info(wheel)}/METADATA").decode()
    prefix = "Classifier: "
    ours = [line[len(prefix) :] for line in metadata.splitlines() if line.startswith(prefix)]
    unknown = [classifier for classifier in ours if classifier not in known]
    if not ours or unknown:
        fail(f"classifiers PyPI would refuse: {unknown}" if unknown else "no classifiers")
    print(f"{len(ours)} classifiers, all known to PyPI")


def sdist_files(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        # Every member sits under "<name>-<version>/": strip that.
        return {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}


def test_installed_wheel(
    wheel: Path, source: Path, work: Path, pins: list[str], pytest_args: list[str]
) -> None:
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    extras = ["test"]
    database = os.environ.get("DATABASE_URL", "")
    if database.startswith("postgres"):
        extras.append("postgres")
    elif database.startswith("mysql"):
        extras.append("mysql")
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[{','.join(extras)}]", *pins)
    run(python, "-c", VERSIONS)

    # The suite and its configuration, and nothing of the package: `import django_khalti`
    # can only find the installed wheel.
    suite = work / "suite"
    # The docs too: the suite follows the tutorial, runs the how-tos' examples and holds
    # the reference and README (whose links name ARCHITECTURE.rst) up against the code.
    for folder in ("tests", "testproject", "docs"):
        shutil.copytree(source / folder, suite / folder)
    # pytest's settings, and the documents tests/test_docs.py reads.
    for name in ("pyproject.toml", "README.rst", "CHANGELOG.rst", "ARCHITECTURE.rst"):
        shutil.copy(source / name, suite / name)
    shutil.copy(source / ".ci" / "installed_wheel.py", suite / "installed_wheel.py")
    # `python -m pytest` puts the working directory first on sys.path: the plugin loads
    # from there.
    run(python, "-m", "pytest", "-p", "installed_wheel", *pytest_args, cwd=suite)


def parse(argv: list[str]) -> tuple[list[str], list[str]]:
    """The ``--pin`` requirements (leading), and pytest's arguments (the rest)."""
    pins, rest = [], list(argv)
    while rest[:1] == ["--pin"]:
        if len(rest) < 2:
            fail("--pin needs a requirement, as --pin 'Django>=5.2,<5.3'")
        pins.append(rest[1])
        rest = rest[2:]
    return pins, rest or DEFAULT_PYTEST_ARGS


def main() -> None:
    pins, pytest_args = parse(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="dj-khalti-package-") as tmp:
        work = Path(tmp)
        dist, source = work / "dist", work / "source"
        files = source_files()
        export(files, source)
        run(sys.executable, "-m", "build", "--outdir", dist, source)
        wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            fail(f"expected one wheel and one sdist, built {sorted(os.listdir(dist))}")
        run(sys.executable, "-m", "twine", "check", "--strict", wheels[0], sdists[0])
        check_classifiers(wheels[0])
        expected = {name for name in files if name.startswith(PACKAGE + "/")}
        check_contents("wheel", wheel_files(wheels[0]), expected)
        check_contents("sdist", sdist_files(sdists[0]), expected)
        test_installed_wheel(wheels[0], source, work, pins, pytest_args)


if __name__ == "__main__":
    main()
