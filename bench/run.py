"""``make bench``: dj-khalti's speed, measured side by side in one run (issues 7, 17, 27).

1. The verify endpoint at 1, 8 and 32 concurrent clients, every target under the same
   gunicorn settings (4 gthread workers x 8 threads), all talking to one fake Khalti over
   HTTPS with an added latency: the testproject on Django's default database connections
   (``CONN_MAX_AGE = 0``, no pool) and on Django's psycopg pool (``"pool": True``), each
   beside its limit (bench/limit.py: the least a correct view does, in the same project),
   a naive baseline (bench/baseline.py) and the peer ``django-khalti`` 1.0 from PyPI in a
   scratch shop written from its README (bench/peer/). The goals are issue 27's, app /
   limit. Then what one verification costs (1c: CPU of gunicorn and PostgreSQL, WAL
   flushes, and pg_stat_statements when PostgreSQL preloads it), and a py-spy profile of
   the app at 32 clients, in both configurations: where the time goes.
2. The app's overhead: its p50 at one client minus the fake's latency.
3. Queries per verification and per idempotent resubmission (in process).
   Then PostgreSQL's CPU per statement of one verification, the app's and the limit's,
   on a new connection and on a kept one.
4. The admin's changelist, search, status filter and overview over 100,000 payments,
   with EXPLAIN.
5. ``khalti_reconcile`` over 10,000 pending payments: settled per second, peak memory.

The report goes to stdout and to bench/results.md. Everything listens on 127.0.0.1
and stops at the end. The databases are PostgreSQL's ``bench`` (the app's) and
``bench_peer`` (the peer's) on BENCH_DATABASE_URL (default
postgres://root@127.0.0.1:5432/bench), dropped and created anew; SQLite in a temporary
directory when PostgreSQL cannot be reached. Sections 2-5 run on Django's defaults.

Knobs (environment): BENCH_DELAY_MS (20), BENCH_REQUESTS per level and target (300),
BENCH_COST_REQUESTS per target for 1c (600),
BENCH_LEVELS ("1,8,32"), BENCH_WORKERS (4), BENCH_THREADS per worker (8),
BENCH_PROFILE_REQUESTS (600; 0: no profile), BENCH_ADMIN_ROWS (100000),
BENCH_RECONCILE_ROWS (10000). A short run: BENCH_REQUESTS=60 BENCH_PROFILE_REQUESTS=200
BENCH_ADMIN_ROWS=10000 BENCH_RECONCILE_ROWS=1000.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTPROJECT = ROOT / "testproject"
BIN = Path(sys.executable).parent
sys.path[:0] = [str(TESTPROJECT), str(ROOT)]

from tests.rig import spawn_gunicorn  # noqa: E402

DELAY_MS = float(os.environ.get("BENCH_DELAY_MS", "20"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "300"))
LEVELS = [int(n) for n in os.environ.get("BENCH_LEVELS", "1,8,32").split(",")]
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
THREADS = int(os.environ.get("BENCH_THREADS", "8"))
PROFILE_REQUESTS = int(os.environ.get("BENCH_PROFILE_REQUESTS", "600"))
ADMIN_ROWS = int(os.environ.get("BENCH_ADMIN_ROWS", "100000"))
RECONCILE_ROWS = int(os.environ.get("BENCH_RECONCILE_ROWS", "10000"))
WARMUP = 2 * WORKERS * THREADS
#: How every target is served (tests/rig.py's spawn_gunicorn: sync workers for 1 thread).
SERVED = (
    f"{WORKERS} gthread workers x {THREADS} threads" if THREADS > 1 else f"{WORKERS} sync workers"
)
#: The peer, installed by `make bench` (or below) where only its server looks for it.
PEER_SITE = BIN.parent / "bench-peer"
PEER_REQUIREMENT = "django-khalti==1.0"
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://root@127.0.0.1:5432/bench")
KHALTI_TIMEOUT = "5"

STARTED = time.monotonic()
WORKDIR = Path(tempfile.mkdtemp(prefix="dj-khalti-bench-"))
report: list[str] = []


def say(line: str = "") -> None:
    """A line of the report: printed now, written to results.md at the end."""
    print(line, flush=True)
    report.append(line)


def note(line: str) -> None:
    """Progress, on stderr only."""
    print(f"[{time.monotonic() - STARTED:6.1f}s] {line}", file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list[object]]) -> None:
    say("| " + " | ".join(header) + " |")
    say("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        say("| " + " | ".join(str(cell) for cell in row) + " |")
    say()


# --- the certificate ---------------------------------------------------------------------


def make_certificate() -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    cert, key = WORKDIR / "cert.pem", WORKDIR / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dj-khalti bench fake Khalti")])
    now = dt.datetime.now(dt.timezone.utc)
    public = private.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


# --- processes -------------------------------------------------------------------------

children: list[subprocess.Popen] = []


def stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=8)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def start_fake(cert: Path, key: Path) -> str:
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "fake_server.py"), str(cert), str(key), str(DELAY_MS / 1000)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(WORKDIR / "fake.log", "wb"),  # noqa: SIM115 (the child process holds it)
        text=True,
        start_new_session=True,
    )
    children.append(process)
    url = process.stdout.readline().strip()
    if not url.startswith("https://127.0.0.1:"):
        raise RuntimeError(f"the fake Khalti did not start: {(WORKDIR / 'fake.log').read_text()}")
    return url


def start_gunicorn(
    name: str, app: str, chdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    """gunicorn serving ``app`` (WORKERS gthread workers of THREADS threads, tests/rig.py's
    spawn_gunicorn), once it answers: the master process and the URL."""
    log = open(WORKDIR / f"{name}.log", "ab")  # noqa: SIM115 (the child process holds it)
    process, url = spawn_gunicorn(
        app,
        chdir=chdir,
        env=env,
        log=log,
        workers=WORKERS,
        threads=THREADS,
        log_level="warning",
    )
    children.append(process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {(WORKDIR / f'{name}.log').read_text()[-3000:]}")
        try:
            requests.get(url + "/khalti/verify/", timeout=2)
            return process, url
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not start")


def install_peer() -> Path:
    """The peer's directory (``pip install --no-deps --target``): `make bench` installs it
    there once; a direct ``python bench/run.py`` does it here if it is missing."""
    if not (PEER_SITE / "khalti" / "views.py").is_file():
        note(f"installing {PEER_REQUIREMENT} into {PEER_SITE}")
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
                *("--target", str(PEER_SITE), PEER_REQUIREMENT),
            ],
            check=True,
        )
    return PEER_SITE


# --- the database ----------------------------------------------------------------------


def prepare_database(suffix: str = "") -> str:
    """DATABASE_URL of a fresh, empty bench database (``bench`` + ``suffix``):
    PostgreSQL, else SQLite."""
    try:
        import psycopg

        parts = urlsplit(DATABASE_URL)
        name = (parts.path.lstrip("/") or "bench") + suffix
        admin_url = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, "", ""))
    except Exception as exc:
        note(f"PostgreSQL unavailable ({exc.__class__.__name__}: {exc}); SQLite instead")
        return f"sqlite:///{WORKDIR / f'bench{suffix}.sqlite3'}"


def create_limit_table() -> None:
    """bench/limit.py's table: one row a verification, unique token, unique live order."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_limit_payment")
        cursor.execute(
            "CREATE TABLE bench_limit_payment (token varchar(255) PRIMARY KEY,"
            " reference varchar(64) UNIQUE, amount bigint NOT NULL, status varchar(16) NOT NULL,"
            " idx varchar(64) NOT NULL DEFAULT '', created_at timestamp NOT NULL DEFAULT"
            " CURRENT_TIMESTAMP)"
        )


def drop_database(url: str) -> None:
    if not url.startswith("postgres"):
        return
    import psycopg

    parts = urlsplit(url)
    admin_url = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


# --- 1. load ---------------------------------------------------------------------------

_serial = itertools.count()


def new_orders(n: int, prefix: str) -> list[tuple[str, int]]:
    from shop.models import Order

    orders = [
        Order(reference=f"{prefix}-{next(_serial)}", total=1000 + 10 * (i % 1000)) for i in range(n)
    ]
    Order.objects.bulk_create(orders, batch_size=1000)
    return [(o.reference, o.total) for o in orders]


def load(target: Target, orders: list[tuple[str, int]], clients: int) -> dict:
    """POST one fresh token per order, ``clients`` at a time: latencies and wall time."""
    local = threading.local()

    def one(order: tuple[str, int]) -> tuple[float, bool, int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        reference, total = order
        payload = {"token": f"tok-{uuid.uuid4().hex}", "amount": total}
        started = time.perf_counter()
        try:
            if target.form:  # the peer reads request.POST: a form, token and amount only
                response = session.post(target.verify_url, data=payload, timeout=30)
            else:
                payload["product_identity"] = reference
                response = session.post(target.verify_url, json=payload, timeout=30)
            code = response.status_code
            # The peer answers 200 for a refusal too, with "status": false.
            ok = code == 200 and (not target.form or b'"status":true' in response.content)
        except requests.RequestException:
            code, ok = 0, False
        return time.perf_counter() - started, ok, code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, orders))
    return {
        "latencies": [t for t, _, _ in results],
        "wall": time.perf_counter() - started,
        "ok": sum(1 for _, ok, _ in results if ok),
        "codes": {code for _, _, code in results},
    }


@dataclass
class Target:
    """One server of section 1."""

    name: str
    label: str
    app: str
    chdir: Path
    env: dict[str, str]
    path: str = "/khalti/verify/"
    form: bool = False
    url: str = ""
    process: subprocess.Popen | None = None

    @property
    def verify_url(self) -> str:
        return self.url + self.path


#: The app's two configurations (section 1's ratios and goals): Django's default
#: connections, and Django's psycopg pool.
CONFIGS = {
    "defaults": "Django's default `CONN_MAX_AGE = 0`",
    "pooled": 'psycopg pool, `OPTIONS = {"pool": True}`',
}
#: The limit of each configuration (bench/limit.py, served the same way): the least a
#: correct view does to record a verification exactly once.
LIMITS = {config: f"limit-{config}" for config in CONFIGS}
#: Issue 27's goals, per configuration: app p50 / limit p50 at most this at every level,
#: and app / limit throughput at least this at the highest level.
P50_GOAL = 1.10
THROUGHPUT_GOAL = 0.90
#: Each level is run in this many rounds, the targets taking turns within each round,
#: so that a change in the machine's background load weighs on every target alike.
ROUNDS = 5


def make_targets(server_env: dict[str, str], peer_database_url: str) -> list[Target]:
    app, limit = "testproject.wsgi:application", "limit:application"
    limit_env = {**server_env, "DJANGO_SETTINGS_MODULE": "limit"}
    targets = [
        Target("naive", "naive `requests.post` view", "baseline:application", BENCH, server_env),
        Target("defaults", "app, " + CONFIGS["defaults"], app, TESTPROJECT, server_env),
        Target(LIMITS["defaults"], "limit, " + CONFIGS["defaults"], limit, BENCH, limit_env),
    ]
    if server_env["DATABASE_URL"].startswith("postgres"):
        pooled = {**server_env, "DJANGO_DB_POOL": "1"}
        targets += [
            Target("pooled", "app, " + CONFIGS["pooled"], app, TESTPROJECT, pooled),
            Target(
                LIMITS["pooled"],
                "limit, " + CONFIGS["pooled"],
                limit,
                BENCH,
                {**limit_env, "DJANGO_DB_POOL": "1"},
            ),
            # For comparison only: what durable commits cost on this disk.
            Target(
                "pooled-unflushed",
                "app, pooled, `synchronous_commit=off` (comparison only)",
                app,
                TESTPROJECT,
                {**pooled, "DJANGO_PG_OPTIONS": "-c synchronous_commit=off"},
            ),
        ]
    peer_env = {
        **server_env,
        "DATABASE_URL": peer_database_url,
        "DJANGO_SETTINGS_MODULE": "peershop.settings",
        "KHALTI_SECRET_KEY": "test_secret_key_testproject",  # the fake's key
        "PYTHONPATH": os.pathsep.join([str(install_peer()), str(BENCH / "peer")]),
    }
    targets.append(
        Target(
            "peer",
            "peer `django-khalti` 1.0",
            "peershop.wsgi:application",
            BENCH / "peer",
            peer_env,
            path="/khalti/verifypayment/",
            form=True,
        )
    )
    return targets


def migrate_peer(peer: Target) -> None:
    """The peer's scratch shop migrated, as its owner would (startproject's apps)."""
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=peer.env,
        cwd=peer.chdir,
        check=True,
    )


def bench_verify(targets: list[Target]) -> dict:
    for target in targets:
        target.process, target.url = start_gunicorn(
            target.name, target.app, target.chdir, target.env
        )
    note("targets: " + ", ".join(f"{t.name} on {t.url}" for t in targets))
    # Warm-up: every worker thread imports what it needs (and the app opens its pool).
    for target in targets:
        load(target, new_orders(WARMUP, f"W{target.name}"), WORKERS * THREADS)
    results = {}
    per_round = max(1, REQUESTS // ROUNDS)
    for clients in LEVELS:
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for round_ in range(ROUNDS):
            turn = round_ % len(targets)
            for target in targets[turn:] + targets[:turn]:
                orders = new_orders(per_round, f"L{clients}{target.name}{round_}")
                runs[target.name].append(load(target, orders, clients))
        for name, parts in runs.items():
            results[(name, clients)] = result = merge(parts)
            note(
                f"{name} @ {clients}: {result['rps']:.1f} req/s p50 {result['p50']:.1f} ms "
                f"p99 {result['p99']:.1f} ms, {result['ok']}/{result['n']} ok {result['codes']}"
            )
    return results


def merge(parts: list[dict]) -> dict:
    """One result from the rounds of one target and level."""
    latencies = sorted(t for part in parts for t in part["latencies"])
    wall = sum(part["wall"] for part in parts)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, round(p * (len(latencies) - 1)))] * 1000

    return {
        "n": len(latencies),
        "ok": sum(part["ok"] for part in parts),
        "rps": len(latencies) / wall,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "codes": sorted({code for part in parts for code in part["codes"]}),
    }


def clients_word(n: int) -> str:
    return f"{n} client" if n == 1 else f"{n} clients"


def p50_verdict(app_ms: float, limit_ms: float) -> str:
    got = app_ms / limit_ms
    if got <= P50_GOAL:
        return f"**met** ({got:.2f})"
    return (
        f"**missed** by {got - P50_GOAL:.2f} ({got:.2f} against at most {P50_GOAL:.2f}: a p50 of "
        f"{app_ms:.1f} ms, {app_ms - P50_GOAL * limit_ms:.1f} ms over the goal's "
        f"{P50_GOAL * limit_ms:.1f} ms)"
    )


def report_verify(targets: list[Target], results: dict) -> None:
    say(
        f"## 1. Verify endpoint: the app and its limit in two configurations, a naive view and "
        f"the peer "
        f"({REQUESTS} requests per level and target in {ROUNDS} interleaved rounds, "
        f"fake Khalti latency {DELAY_MS:g} ms, HTTPS)"
    )
    say()
    rows = []
    for target in targets:
        for clients in LEVELS:
            r = results[(target.name, clients)]
            rows.append(
                [
                    target.label,
                    clients,
                    f"{r['rps']:.1f}",
                    f"{r['p50']:.1f}",
                    f"{r['p99']:.1f}",
                    f"{r['ok']}/{r['n']}",
                ]
            )
    table(["target", "clients", "req/s", "p50 ms", "p99 ms", "ok"], rows)

    names = {t.name for t in targets}
    configs = [c for c in CONFIGS if c in names]

    def ratio(name: str, clients: int, to: str = "naive", key: str = "p50") -> float:
        return results[(name, clients)][key] / results[(to, clients)][key]

    table(
        ["p50, app / limit", *(clients_word(n) for n in LEVELS), "throughput at "
         + clients_word(max(LEVELS))],
        [
            [CONFIGS[c], *(f"{ratio(c, n, LIMITS[c]):.2f}" for n in LEVELS),
             f"{ratio(c, max(LEVELS), LIMITS[c], 'rps'):.2f}"]
            for c in configs
        ],
    )  # fmt: skip
    say("Goals (issue 27), app / limit in this run:")
    say()
    for config in CONFIGS:
        if config not in names:
            say(f"- {CONFIGS[config]}: not measured (PostgreSQL unavailable)")
            continue
        for clients in LEVELS:
            say(f"- {CONFIGS[config]}, p50 at {clients_word(clients)}: " + p50_verdict(
                results[(config, clients)]["p50"], results[(LIMITS[config], clients)]["p50"]
            ))  # fmt: skip
        top = max(LEVELS)
        got = ratio(config, top, LIMITS[config], "rps")
        verdict = (
            f"**met** ({got:.2f})"
            if got >= THROUGHPUT_GOAL
            else f"**missed** by {THROUGHPUT_GOAL - got:.2f} ({got:.2f} against at least "
            f"{THROUGHPUT_GOAL:.2f}: {results[(config, top)]['rps']:.1f} req/s against the "
            f"limit's {results[(LIMITS[config], top)]['rps']:.1f})"
        )
        say(f"- {CONFIGS[config]}, throughput at {clients_word(top)}: {verdict}")
    say()
    table(
        ["p50, target / naive", *(clients_word(n) for n in LEVELS)],
        [
            [t.label, *(f"{ratio(t.name, n):.2f}x" for n in LEVELS)]
            for t in targets
            if t.name != "naive"
        ],
    )
    say(
        f"Every target runs under the same gunicorn settings: {SERVED} (`--preload`). "
        "The naive view (bench/baseline.py) calls `requests.post` per verification: a new "
        "TCP+TLS connection each time, no database, no amount check, no idempotency. The "
        "peer (bench/peer/, `django-khalti` 1.0 from PyPI in a scratch shop written from "
        "its README's quick start, Django's default connections, its own database) does the "
        "same from a DRF view, reading a form body. The app runs on its own database twice: "
        "on Django's defaults (a new PostgreSQL connection for every request) and on "
        "Django's psycopg pool with its default size (4 connections per worker process, "
        f"shared by its {THREADS} threads). The limit (bench/limit.py) runs beside it in each "
        "configuration, in the same project (settings, middleware, database, the shop's "
        "resolver): the least a correct view does, with 2 commits (the claim: one INSERT of "
        "token and order, committed before Khalti is asked; the result and the shop's own "
        "writes in one transaction) and a kept-alive session to Khalti. Every request of any "
        "target is a fresh token for a fresh order."
    )
    say()
    if "pooled-unflushed" not in names:
        return
    say(
        "What flushing commits costs: the pooled app with PostgreSQL told not to wait for "
        "its commits to reach the disk (`synchronous_commit=off`, for comparison only; "
        "dj-khalti's guarantees assume durable commits). A verification commits four times: "
        "the claim before Khalti is called, the result and its signal after (one statement "
        "each), the shop's receiver, and the signal marked delivered."
    )
    say()
    rows = []
    for clients in LEVELS:
        app = results[("pooled", clients)]
        fast = results[("pooled-unflushed", clients)]
        rows.append(
            [
                clients,
                f"{fast['rps']:.1f}",
                f"{fast['p50']:.1f}",
                f"{fast['ok']}/{fast['n']}",
                f"{ratio('pooled-unflushed', clients):.2f}x",
                f"{app['p50'] - fast['p50']:.1f}",
            ]
        )
    table(
        [
            "clients",
            "unflushed req/s",
            "unflushed p50 ms",
            "unflushed ok",
            "p50 unflushed/naive",
            "pooled p50 ms spent flushing commits",
        ],
        rows,
    )


# --- 1c. what a verification costs ------------------------------------------------------

#: Section 1c: verifications per app and limit target, at COST_CLIENTS clients.
COST_REQUESTS = int(os.environ.get("BENCH_COST_REQUESTS", "600"))
COST_CLIENTS = 16


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (and the reaped children they waited for)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(n) for n in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def postgres_pids() -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and (entry / "comm").exists()
        and (entry / "comm").read_text().strip() == "postgres"
    ]


def pg_stat(cursor, sql: str) -> list[tuple]:
    cursor.execute(sql)
    return cursor.fetchall()


def statements_loaded(cursor) -> bool:
    """Whether pg_stat_statements collects (it must be in shared_preload_libraries)."""
    if "pg_stat_statements" not in pg_stat(cursor, "SHOW shared_preload_libraries")[0][0]:
        return False
    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return True


def bench_costs(targets: list[Target]) -> dict:
    """Per app and limit target: CPU per verification of its gunicorn (master and
    workers) and of PostgreSQL's processes, WAL flushes (pg_stat_wal), and with
    pg_stat_statements loaded, each statement's calls and mean time."""
    from django.db import connection

    measured = [t for t in targets if t.name in CONFIGS or t.name in LIMITS.values()]
    costs: dict = {}
    if connection.vendor != "postgresql":
        return costs
    with connection.cursor() as cursor:
        loaded = statements_loaded(cursor)
        for target in measured:
            orders = new_orders(COST_REQUESTS, f"C{target.name}")
            if loaded:
                cursor.execute("SELECT pg_stat_statements_reset()")
            (wal_before,) = pg_stat(cursor, "SELECT wal_sync, wal_write FROM pg_stat_wal")
            tree, pg = process_tree(target.process.pid), postgres_pids()
            app_cpu, pg_cpu = cpu_seconds(tree), cpu_seconds(pg)
            result = load(target, orders, COST_CLIENTS)
            app_cpu, pg_cpu = cpu_seconds(tree) - app_cpu, cpu_seconds(pg) - pg_cpu
            (wal_after,) = pg_stat(cursor, "SELECT wal_sync, wal_write FROM pg_stat_wal")
            n = max(result["ok"], 1)
            costs[target.name] = {
                "app_ms": app_cpu / n * 1000,
                "pg_ms": pg_cpu / n * 1000,
                "syncs": (wal_after[0] - wal_before[0]) / n,
                "writes": (wal_after[1] - wal_before[1]) / n,
                "ok": result["ok"],
                "statements": pg_stat(
                    cursor,
                    "SELECT calls, mean_exec_time, wal_records, left(regexp_replace(query, "
                    "'\\s+', ' ', 'g'), 90) FROM pg_stat_statements WHERE dbid = (SELECT oid "
                    "FROM pg_database WHERE datname = current_database()) AND calls >= "
                    f"{COST_REQUESTS // 2} ORDER BY calls DESC, mean_exec_time DESC LIMIT 14",
                )
                if loaded
                else None,
            }
    return costs


def report_costs(targets: list[Target], costs: dict) -> None:
    say(
        f"## 1c. What one verification costs: CPU, WAL flushes and statements "
        f"({COST_REQUESTS} verifications per target at {COST_CLIENTS} clients)"
    )
    say()
    if not costs:
        say("PostgreSQL unavailable: not measured.")
        say()
        return
    rows = [
        [
            t.label,
            f"{costs[t.name]['app_ms']:.1f}",
            f"{costs[t.name]['pg_ms']:.1f}",
            f"{costs[t.name]['syncs']:.2f}",
            f"{costs[t.name]['writes']:.2f}",
        ]
        for t in targets
        if t.name in costs
    ]
    table(
        [
            "target",
            "gunicorn CPU ms",
            "PostgreSQL CPU ms",
            "WAL flushes (pg_stat_wal.wal_sync)",
            "WAL writes",
        ],
        rows,
    )
    say(
        "CPU: utime+stime per verification of the target's gunicorn (master and workers) and "
        "of every PostgreSQL process on the machine (the bench runs nothing else on it), the "
        "same order-creating load generator for every target. A flush is PostgreSQL waiting "
        "for the disk; commits that arrive together share one (group commit)."
    )
    say()
    for target in targets:
        listed = costs.get(target.name, {}).get("statements")
        if listed is None:
            continue
        say(f"<details><summary>pg_stat_statements, {target.label}</summary>")
        say()
        table(
            ["calls per verification", "mean ms", "WAL records per call", "statement"],
            [
                [
                    f"{calls / costs[target.name]['ok']:.2f}",
                    f"{mean:.3f}",
                    f"{wal / max(calls, 1):.1f}",
                    f"`{text}`",
                ]
                for calls, mean, wal, text in listed
            ],
        )
        say("</details>")
        say()
    if all(costs[t.name].get("statements") is None for t in targets if t.name in costs):
        say(
            "pg_stat_statements is not loaded here (add it to PostgreSQL's "
            "`shared_preload_libraries` and restart it to see each statement's calls and time)."
        )
        say()


# --- 1b. profile -------------------------------------------------------------------------


def profile(target: Target, clients: int) -> Path | None:
    """py-spy on ``target``'s gunicorn (master and workers) while ``clients`` clients post
    PROFILE_REQUESTS verifications: the raw (collapsed) stacks, or None (why: noted)."""
    out = WORKDIR / f"profile-{target.name}.txt"
    spy = subprocess.Popen(
        [
            *(str(BIN / "py-spy"), "record", "--pid", str(target.process.pid), "--subprocesses"),
            *("--idle", "--nonblocking", "--nolineno", "--rate", "100", "--format", "raw"),
            *("-o", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(WORKDIR / f"py-spy-{target.name}.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    time.sleep(2)  # py-spy attaches to the workers
    if spy.poll() is not None:
        note(f"py-spy exited: {(WORKDIR / f'py-spy-{target.name}.log').read_text()[-500:]}")
        return None
    load(target, new_orders(PROFILE_REQUESTS, f"P{target.name}"), clients)
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not out.is_file():
        note(f"py-spy wrote nothing: {(WORKDIR / f'py-spy-{target.name}.log').read_text()[-500:]}")
        return None
    return out


FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")


def short(file: str) -> str:
    """A frame's file without the environment's prefix: ``django/db/models/query.py``."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    if re.search(r"/lib/python3\.\d+/", file):
        return re.split(r"/lib/python3\.\d+/", file, maxsplit=1)[1]
    return file.replace(str(ROOT) + "/", "")


#: Where a request thread's sample goes, by what the stack is doing (first match wins):
#: the waits by an ancestor frame, the rest by the innermost frame's package.
WAITS = (
    ("ConnectionPool.getconn", "waiting for a connection from the pool"),
    ("get_new_connection", "opening a new database connection"),
    ("django_khalti/client/", "the call to Khalti (our client, TLS, the fake's latency)"),
)
LEAVES = (
    ("psycopg", "PostgreSQL statements and commits (psycopg waiting for the server)"),
    ("testproject/shop/", "the shop's resolver and receivers (Python)"),
    ("django_khalti/", "dj-khalti (Python, own time)"),
    ("django/db/", "Django ORM (Python)"),
    ("django/", "Django request handling, middleware (Python)"),
    ("rest_framework/", "DRF (Python)"),
)


def category(frames: list[re.Match]) -> str:
    for marker, name in WAITS:
        if any(marker in f"{m['func']} ({m['file']})" for m in frames):
            return name
    for m in reversed(frames):  # the innermost frame that is not the standard library's
        file = short(m["file"])
        for prefix, name in LEAVES:
            if file.startswith(prefix):
                return name
    return "other (the standard library: json, logging, uuid, ...)"


def summarise_profile(raw: Path) -> dict:
    """The samples of request threads (inside Django's WSGI handler), idle or not:
    wall-clock time of the requests, by category, by innermost frame, and by the
    innermost django_khalti function on the stack."""
    own: Counter = Counter()
    categories: Counter = Counter()
    ours_own: Counter = Counter()
    ours_innermost: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [m for m in (FRAME.match(f) for f in stack.split(";")) if m]
        if not any("django/core/handlers/wsgi.py" in m["file"] for m in frames):
            continue  # a thread waiting for work, gunicorn's own loop, the pool's workers
        n = int(count)
        total += n
        name = lambda m: f"{m['func']} ({short(m['file'])})"  # noqa: E731
        own[name(frames[-1])] += n
        categories[category(frames)] += n
        ours = [m for m in frames if "django_khalti/" in m["file"]]
        if ours:
            ours_innermost[name(ours[-1])] += n
            if ours[-1] is frames[-1]:
                ours_own[name(frames[-1])] += n
    return {
        "total": total,
        "own": own,
        "categories": categories,
        "ours_own": ours_own,
        "ours_innermost": ours_innermost,
    }


def report_profiles(profiles: dict[str, dict | str], clients: int) -> None:
    say(
        f"## 1b. Where the time goes: py-spy on the app at {clients_word(clients)} "
        f"({PROFILE_REQUESTS} verifications per configuration, after the measured rounds)"
    )
    say()
    say(
        "`py-spy record --subprocesses --idle --nolineno --rate 100 --format raw` on the "
        "gunicorn master of each configuration; only the samples of threads inside Django's "
        "WSGI handler are kept, idle or not, so the shares below are shares of the requests' "
        "wall-clock time (waiting included). C code (TLS, psycopg's libpq) is counted in the "
        "Python frame that called it. Categories: a wait is recognised by a frame on the "
        "stack (the pool's getconn, Django's get_new_connection, dj-khalti's Khalti client); "
        "the rest goes by the innermost frame outside the standard library."
    )
    say()
    for config, summary in profiles.items():
        if isinstance(summary, str):
            say(f"- {CONFIGS[config]}: no profile ({summary})")
            say()
            continue
        total = summary["total"] or 1

        def pct(n: int, total: int = total) -> str:
            return f"{n / total * 100:.1f}%"

        say(f"### {CONFIGS[config]}: {summary['total']} request-thread samples")
        say()
        table(
            ["request time by category", "samples", "share"],
            [[name, n, pct(n)] for name, n in summary["categories"].most_common()],
        )
        table(
            ["innermost frame (top 12)", "samples", "share"],
            [[f"`{name}`", n, pct(n)] for name, n in summary["own"].most_common(12)],
        )
        table(
            [
                "innermost django_khalti function on the stack (with what it calls)",
                "samples",
                "share",
            ],
            [[f"`{name}`", n, pct(n)] for name, n in summary["ours_innermost"].most_common(12)]
            or [["(none sampled)", 0, "0%"]],
        )
        table(
            ["django_khalti frames, own time", "samples", "share"],
            [[f"`{name}`", n, pct(n)] for name, n in summary["ours_own"].most_common(8)]
            or [["(none sampled)", 0, "0%"]],
        )


# --- 3. queries --------------------------------------------------------------------------


def bench_queries() -> list[list[object]]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()

    def post(reference: str, total: int, token: str) -> tuple[int, list[str]]:
        payload = {"token": token, "amount": total, "product_identity": reference}
        with CaptureQueriesContext(connection) as ctx:
            response = client.post("/khalti/verify/", payload, content_type="application/json")
        return response.status_code, [q["sql"] for q in ctx.captured_queries]

    rows = []
    for _attempt in range(3):  # the first warms up caches; the last is reported
        ((reference, total),) = new_orders(1, "Q")
        token = f"tok-q-{uuid.uuid4().hex}"
        first_status, first = post(reference, total, token)
        again_status, again = post(reference, total, token)

    def control(s: str) -> bool:  # transaction control, not a query
        return bool(re.match(r"\s*(BEGIN|COMMIT|ROLLBACK)\b", s))

    def receivers(s: str) -> bool:  # the shop's payment_verified receivers write
        return bool(re.match(r'\s*(UPDATE|INSERT INTO) "shop_', s))

    def breakdown(sqls: list[str]) -> str:
        shop_reads = sum(1 for s in sqls if '"shop_' in s and not receivers(s))
        ours = sum(1 for s in sqls if '"shop_' not in s and not control(s))
        return (
            f"{ours} dj-khalti, {shop_reads} resolver, {sum(map(receivers, sqls))} receivers, "
            f"{sum(map(control, sqls))} BEGIN/COMMIT"
        )

    def round_trips(sqls: list[str]) -> int:
        """dj-khalti's and the resolver's statements, BEGIN and COMMIT included; not
        the shop's receivers (their transaction, BEGIN to COMMIT, is the shop's)."""
        counted, block = 0, None
        for s in sqls:
            if re.match(r"\s*BEGIN\b", s):
                block = [s]
            elif block is not None:
                block.append(s)
                if control(s):  # COMMIT or ROLLBACK: the block ends
                    counted += 0 if any(map(receivers, block)) else len(block)
                    block = None
            elif not receivers(s):
                counted += 1
        return counted

    for label, status, sqls, goal in (
        ("successful verification", first_status, first, 5),
        ("idempotent resubmission", again_status, again, 1),
    ):
        # Issue 17's goal: round trips of dj-khalti and the resolver, without the receivers.
        counted = round_trips(sqls)
        verdict = "met" if counted <= goal else f"missed by {counted - goal}"
        rows.append([label, status, len(sqls), counted, breakdown(sqls), f"<= {goal}", verdict])
    return rows, first, again


def bench_breakdown(n: int = 100) -> dict[str, float]:
    """Where a verification's time goes, in process: mean ms per successful verification
    opening database connections (Django's default: one per request), in SQL statements,
    in COMMITs, in the call to Khalti, and in Python around them (Django, DRF, dj-khalti,
    the shop's resolver and receiver)."""
    import requests as requests_module
    from django.db import connection
    from django.test import Client

    spent = {"connect": 0.0, "sql": 0.0, "commit": 0.0, "khalti": 0.0}

    def timed_sql(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            spent["sql"] += time.perf_counter() - started

    plain_commit = connection.commit
    plain_connect = connection.connect
    plain_send = requests_module.Session.send

    def timed_commit() -> None:
        started = time.perf_counter()
        try:
            plain_commit()
        finally:
            spent["commit"] += time.perf_counter() - started

    def timed_connect() -> None:
        started = time.perf_counter()
        try:
            plain_connect()
        finally:
            spent["connect"] += time.perf_counter() - started

    def timed_send(self, request, **kwargs):
        started = time.perf_counter()
        try:
            return plain_send(self, request, **kwargs)
        finally:
            spent["khalti"] += time.perf_counter() - started

    client = Client()
    orders = new_orders(n + 10, "T")
    connection.commit = timed_commit
    connection.connect = timed_connect
    requests_module.Session.send = timed_send
    try:
        with connection.execute_wrapper(timed_sql):
            for i, (reference, total) in enumerate(orders):
                if i == 10:  # the first ten warm up; the rest are measured
                    spent.update(connect=0.0, sql=0.0, commit=0.0, khalti=0.0)
                    started = time.perf_counter()
                payload = {"token": f"tok-t-{uuid.uuid4().hex}", "amount": total}
                payload["product_identity"] = reference
                response = client.post("/khalti/verify/", payload, content_type="application/json")
                assert response.status_code == 200, response.content
                # What a server does at the end of a request on Django's defaults
                # (CONN_MAX_AGE 0); the test client leaves the connection open.
                connection.close()
            total_s = time.perf_counter() - started
    finally:
        del connection.commit
        del connection.connect
        requests_module.Session.send = plain_send
    out = {name: seconds / n * 1000 for name, seconds in spent.items()}
    out["total"] = total_s / n * 1000
    out["python"] = out["total"] - sum(out[k] for k in spent)
    return out


def report_breakdown(parts: dict[str, float]) -> None:
    say(
        "## 3b. Where a verification's time goes (in process, django.test.Client, 100 requests, "
        "Django's default connections)"
    )
    say()
    table(
        ["part", "mean ms", "share"],
        [
            [label, f"{parts[key]:.2f}", f"{parts[key] / parts['total'] * 100:.0f}%"]
            for key, label in (
                ("khalti", f"the call to Khalti (the fake answers after {DELAY_MS:g} ms)"),
                ("connect", "opening the database connection (CONN_MAX_AGE 0: every request)"),
                ("commit", "COMMITs (the claim and the result; flushed to disk)"),
                ("sql", "SQL statements (dj-khalti's, the resolver's, the receiver's)"),
                ("python", "Python: Django, DRF, dj-khalti, the shop's code"),
                ("total", "total"),
            )
        ],
    )
    say()


def report_queries(rows: list, first: list[str], again: list[str]) -> None:
    say(
        "## 3. Database queries per request (in process, django.test.Client, CaptureQueriesContext)"
    )
    say()
    table(["request", "HTTP", "all statements", "counted", "breakdown", "goal", "verdict"], rows)
    say(
        "Counted: the round trips of dj-khalti and the shop's amount resolver (one SELECT on "
        "shop_order), BEGIN and COMMIT included; not the shop's payment_verified receivers "
        "(their transaction: UPDATE shop_order, INSERT shop_orderevent)."
    )
    say()
    for label, sqls in (("verification", first), ("resubmission", again)):
        say(f"<details><summary>{label}: {len(sqls)} statements</summary>")
        say()
        for s in sqls:
            say(f"    {s[:300]}")
        say()
        say("</details>")
        say()


# --- 3c. PostgreSQL's CPU per statement ---------------------------------------------------

#: Section 3c: replays of one verification's statements per target and kind of connection.
REPLAYS = 40


def sent_by(urlconf: str) -> tuple[list[str], str]:
    """The statements one verification of a fresh order sends through ``urlconf``
    (the app's or bench/limit.py's), each with its parameters in place; and the
    order's reference. What it wrote is taken back (:func:`undo_verification`).
    """
    from django.db import connection
    from django.test import Client
    from django.test.utils import override_settings
    from django.urls import clear_url_caches

    sent: list[str] = []

    def keep(execute, sql, params, many, context):
        sent.append(connection.connection.cursor().mogrify(sql, params) if params else sql)
        return execute(sql, params, many, context)

    ((reference, total),) = new_orders(1, "S")
    payload = {"token": f"tok-s-{uuid.uuid4().hex}", "amount": total}
    payload["product_identity"] = reference
    settings_module = os.environ["DJANGO_SETTINGS_MODULE"]  # bench/limit.py sets its own
    try:
        with override_settings(ROOT_URLCONF=urlconf):
            clear_url_caches()
            with connection.execute_wrapper(keep):
                response = Client().post(
                    "/khalti/verify/", payload, content_type="application/json"
                )
    finally:
        clear_url_caches()
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    assert response.status_code == 200, response.content
    undo_verification(reference)
    return sent, reference


def undo_verification(reference: str) -> None:
    """Take back what a verification of the order ``reference`` wrote (the app's rows
    or the limit's, the shop's), so that its statements can be run again."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM django_khalti_signaldelivery WHERE payment_id IN"
            " (SELECT id FROM django_khalti_payment WHERE order_reference = %s)",
            [reference],
        )
        cursor.execute("DELETE FROM django_khalti_payment WHERE order_reference = %s", [reference])
        cursor.execute("DELETE FROM bench_limit_payment WHERE reference = %s", [reference])
        cursor.execute("DELETE FROM shop_orderevent WHERE order_reference = %s", [reference])
        cursor.execute(
            "UPDATE shop_order SET paid = false, paid_at = NULL WHERE reference = %s", [reference]
        )


def backend_cpu_ms(pid: int) -> float:
    """CPU time a PostgreSQL backend has used, in ms (Linux; the server on this machine)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def replayed(statements: list[str], url: str, fresh: bool) -> tuple[float, list[float]]:
    """Each statement's CPU in the PostgreSQL backend (median of REPLAYS runs, in one
    transaction rolled back), on a new connection each run or on one kept; and the
    median CPU of opening a connection (0 when kept)."""
    import psycopg

    starts, costs = [], [[] for _ in statements]
    kept = None
    for _run in range(REPLAYS):
        conn = kept or psycopg.connect(url)
        pid = conn.info.backend_pid
        starts.append(0.0 if kept else backend_cpu_ms(pid))
        conn.execute("SELECT set_config('TimeZone', 'UTC', false)")  # as Django's session
        for statement, cost in zip(statements, costs, strict=True):
            before = backend_cpu_ms(pid)
            conn.execute(statement)
            cost.append(backend_cpu_ms(pid) - before)
        conn.rollback()
        if fresh:
            conn.close()
        else:
            kept = conn
    if kept is not None:
        kept.close()
    return statistics.median(starts), [statistics.median(cost) for cost in costs]


def bench_statement_cpu(database_url: str) -> dict | None:
    """Section 3c: the app's and the limit's statements of one verification, replayed
    on new and kept connections; None where the backends' CPU cannot be read."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    if not Path(f"/proc/{pid}/schedstat").is_file():
        return None
    measured = {}
    for name, urlconf in (("app", "testproject.urls"), ("limit", "limit")):
        statements, _reference = sent_by(urlconf)
        measured[name] = {
            "statements": statements,
            "new": replayed(statements, database_url, fresh=True),
            "kept": replayed(statements, database_url, fresh=False),
        }
    return measured


def report_statement_cpu(measured: dict | None) -> None:
    say(
        "## 3c. PostgreSQL's CPU per statement of one verification (the app's and the "
        f"limit's statements replayed, median of {REPLAYS} runs each)"
    )
    say()
    if measured is None:
        say("Not measured: PostgreSQL is not on this machine (its backends' CPU is read in /proc).")
        say()
        return
    rows = []
    for name, label in (("app", "app"), ("limit", "limit")):
        part = measured[name]
        (start, new), (_kept_start, kept) = part["new"], part["kept"]
        for statement, on_new, on_kept in zip(part["statements"], new, kept, strict=True):
            text = re.sub(r"\s+", " ", statement)[:80]
            rows.append([label, f"`{text}`", f"{on_new:.2f}", f"{on_kept:.2f}"])
        rows.append([label, "**all statements**", f"**{sum(new):.2f}**", f"**{sum(kept):.2f}**"])
        rows.append([label, "opening the connection", f"{start:.2f}", "-"])
    table(["target", "statement", "new connection ms", "kept connection ms"], rows)
    say(
        "CPU of the PostgreSQL backend (/proc/<pid>/schedstat) around each statement, the "
        "statements of one verification run again in a transaction rolled back: on a new "
        "connection each run (Django's defaults: a new connection per request) and on one "
        "kept (the pool). On a new connection the first statement to touch a table pays for "
        "reading its definition, indexes and constraints into the backend's caches; "
        "pg_stat_statements (section 1c) counts only planning and execution, not that."
    )
    say()


# --- 4. admin ----------------------------------------------------------------------------


def bench_admin(rows_wanted: int) -> None:
    import random

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from django_khalti.models import Payment, order_key

    note(f"bulk-creating {rows_wanted} payments")
    started = time.perf_counter()
    rng = random.Random(7)
    statuses = (
        [Payment.Status.VERIFIED] * 80
        + [Payment.Status.FAILED] * 10
        + [Payment.Status.PENDING] * 8
        + [Payment.Status.REFUNDED] * 2
    )
    batch: list[Payment] = []
    sample = {}
    for i in range(rows_wanted):
        status = rng.choice(statuses)
        paid = status != Payment.Status.PENDING and status != Payment.Status.FAILED
        reference = f"ORD-{i:07d}"
        payment = Payment(
            token=f"adm-{uuid.uuid4().hex}",
            product_identity=reference,
            amount=1000 + i % 5000,
            status=status,
            idx=f"idx-adm-{i:07d}" if paid else None,
            order_claim=order_key(reference) if status != Payment.Status.FAILED else None,
            mobile="98XXXXXXX9" if paid else "",
            khalti_response={"idx": f"idx-adm-{i:07d}", "state": {"name": "Completed"}}
            if paid
            else None,
            failure_reason="Khalti rejected the payment" if status == Payment.Status.FAILED else "",
        )
        if i == rows_wanted // 2:
            sample = {
                "token": payment.token,
                "idx": payment.idx or f"idx-adm-{i:07d}",
                "product_identity": reference,
            }
            if payment.idx is None:
                payment.idx, payment.status, payment.order_claim = (
                    sample["idx"],
                    Payment.Status.VERIFIED,
                    order_key(reference),
                )
        batch.append(payment)
        if len(batch) == 5000:
            Payment.objects.bulk_create(batch)
            batch = []
    if batch:
        Payment.objects.bulk_create(batch)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE django_khalti_payment SET created_at = created_at - "
                "random() * interval '730 days' WHERE token LIKE 'adm-%%'"
            )
        else:
            # Without parameters, SQLite's cursor takes a % as it is.
            cursor.execute(
                "UPDATE django_khalti_payment SET created_at = datetime(created_at, "
                "'-' || abs(random() % 63072000) || ' seconds') WHERE token LIKE 'adm-%'"
            )
        # Paid rows verified when they were made: the overview's chart has days to draw.
        cursor.execute(
            "UPDATE django_khalti_payment SET verified_at = created_at "
            "WHERE token LIKE %s AND status IN (%s, %s)",
            ["adm-%", Payment.Status.VERIFIED, Payment.Status.REFUNDED],
        )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE django_khalti_payment")
    created = time.perf_counter() - started
    total = Payment.objects.count()
    note(f"{rows_wanted} payments in {created:.1f}s; {total} in the table")

    User = get_user_model()
    User.objects.create_superuser("bench", "bench@example.com", "bench")
    client = Client()
    client.force_login(User.objects.get(username="bench"))
    base = "/admin/django_khalti/payment/"
    cases = [
        ("changelist", base),
        ("search by token (=token)", f"{base}?q={sample['token']}"),
        ("search by idx (=idx)", f"{base}?q={sample['idx']}"),
        ("search by product_identity", f"{base}?q={sample['product_identity']}"),
        ("filter status=pending", f"{base}?status__exact=pending"),
        ("overview (issue 18)", f"{base}overview/"),
    ]
    rows, plans = [], []
    for label, path in cases:
        client.get(path)  # warm
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        with CaptureQueriesContext(connection) as ctx:
            client.get(path)
        payment_sqls = [
            q["sql"]
            for q in ctx.captured_queries
            if "django_khalti_payment" in q["sql"]
            and q["sql"].lstrip().upper().startswith("SELECT")
        ]
        scans = []
        for sql in payment_sqls:
            plan = explain(connection, sql)
            kinds = sorted(
                set(
                    re.findall(
                        r"(Seq Scan|Parallel Seq Scan|Index Only Scan|Index Scan|"
                        r"Bitmap Index Scan|SCAN|SEARCH)(?: Backward)?(?: (?:using|on) (\S+))?",
                        plan,
                    )
                )
            )
            scans.append(", ".join(f"{k}{' ' + i if i else ''}" for k, i in kinds))
            plans.append((label, sql, plan))
        seq = any("Seq Scan" in s or re.search(r"\bSCAN\b", s) for s in scans)
        rows.append(
            [
                label,
                response.status_code,
                f"{statistics.median(times):.0f}",
                f"{max(times):.0f}",
                len(ctx.captured_queries),
                "; ".join(scans) or "-",
                "**no: sequential scan**" if seq else "yes",
            ]
        )

    say(
        f"## 4. Admin over {total:,} payments ({rows_wanted:,} bulk-created in {created:.0f} s; "
        f"{connection.vendor}), superuser, median of 5 GETs"
    )
    say()
    table(
        [
            "page",
            "HTTP",
            "median ms",
            "max ms",
            "queries",
            "scans of django_khalti_payment (EXPLAIN)",
            "index scans only?",
        ],
        rows,
    )
    say("Plans (the payment-table SELECTs of each page):")
    say()
    for label, sql, plan in plans:
        say(f"<details><summary>{label}</summary>")
        say()
        say(f"    {sql[:600]}")
        say()
        for line in plan.splitlines():
            say(f"    {line}")
        say()
        say("</details>")
        say()


def explain(connection, sql: str) -> str:
    with connection.cursor() as cursor:
        prefix = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
        # The captured SQL has its parameters inlined; run without parameters, a
        # literal % stays as it is.
        cursor.execute(prefix + sql)
        return "\n".join(" ".join(str(c) for c in row) for row in cursor.fetchall())


# --- 5. reconcile --------------------------------------------------------------------------


def bench_reconcile(server_env: dict[str, str], n: int) -> None:
    from django_khalti.models import Payment, order_key

    new = new_orders(n, "REC")
    Payment.objects.bulk_create(
        [
            # A widget payment whose verification Khalti completed but whose answer the
            # shop lost; the buyer's page reported its idx (bench/fake_server.py).
            # bulk_create skips Payment.save: the claims a saved row has, set here.
            Payment(
                token=(token := f"rec-{uuid.uuid4().hex}"),
                token_claim=token,
                claimed_idx=f"idx-{token}",
                product_identity=reference,
                order_reference=reference,
                order_claim=order_key(reference),
                amount=total,
            )
            for reference, total in new
        ],
        batch_size=5000,
    )
    pending = Payment.objects.pending().count()
    note(f"reconciling {pending} pending payments")

    _, _, idle_rss, _ = run_command(server_env, "check")
    code, took, rss, output = run_command(server_env, "khalti_reconcile", "--older-than", "0")
    settled = Payment.objects.filter(
        token__startswith="rec-", status=Payment.Status.VERIFIED
    ).count()
    left = Payment.objects.filter(token__startswith="rec-", status=Payment.Status.PENDING).count()
    # Anything not verified, by status and reason: the reader sees why.
    unsettled = Counter(
        Payment.objects.filter(token__startswith="rec-")
        .exclude(status=Payment.Status.VERIFIED)
        .values_list("status", "failure_reason")
    )
    summary = [line for line in output.splitlines() if line.startswith("checked")]
    say(
        f"## 5. khalti_reconcile --older-than 0 over {pending:,} pending payments "
        "(Khalti completed them; the shop lost the answers)"
    )
    say()
    table(
        [
            "pending",
            "settled (verified)",
            "still pending",
            "exit",
            "seconds",
            "settled/s",
            "peak RSS MiB",
            "peak RSS of `manage.py check` MiB",
        ],
        [
            [
                pending,
                settled,
                left,
                code,
                f"{took:.1f}",
                f"{settled / took:.0f}",
                f"{rss / 1024:.0f}",
                f"{idle_rss / 1024:.0f}",
            ]
        ],
    )
    say(f"Command's summary: `{summary[-1] if summary else output[-300:]}`")
    for (status, reason), n in unsettled.most_common(5):
        say(f"- {n} left {status}: {reason[:200] or '(no reason stored)'}")
    say()


# --- 6. the ledger walk ----------------------------------------------------------------------

#: The ledger walk's list sizes, each in days of its own (``bench/ledger.py``): memory
#: must not grow with the records.
LEDGER_SIZES = [int(n) for n in os.environ.get("BENCH_LEDGER_SIZES", "2500,5000,10000").split(",")]


#: Runs ``manage.py`` and, at its exit, prints its own peak RSS (``VmHWM``, of its own
#: memory map). The kernel's ``ru_maxrss`` of a child is no use here: it keeps the
#: high-water mark of the bench's memory the child was forked from.
PEAK_RSS_RUNNER = (
    "import atexit, re, runpy, sys\n"
    "def peak():\n"
    "    found = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
    "    print(f'peak-rss-kib {found.group(1) if found else 0}', flush=True)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_command(server_env: dict[str, str], *args: str) -> tuple[int, float, int, str]:
    """``manage.py *args`` in a process of its own: exit status, seconds, its own peak
    RSS (KiB), output.
    """
    out = open(WORKDIR / "command.out", "w+")  # noqa: SIM115 (the child process holds it)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", PEAK_RSS_RUNNER, str(TESTPROJECT / "manage.py"), *args],
        env=server_env,
        cwd=TESTPROJECT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    children.append(process)
    process.wait()
    took = time.perf_counter() - started
    out.seek(0)
    output = out.read()
    peaks = re.findall(r"^peak-rss-kib (\d+)$", output, re.MULTILINE)
    return process.returncode, took, int(peaks[-1]) if peaks else 0, output


def ledger_payments(n: int, day: str) -> None:
    """The payments the list of ``n`` records newest on ``day`` is of, verified (run in
    the ledger's own database: ``manage.py shell -c``, see :func:`walk_ledger_of`).
    """
    from bench.ledger import bench_payment_fields
    from django_khalti.models import Payment, order_key

    rows = []
    for i in range(n):
        fields = bench_payment_fields(n, day, i)
        if fields is None:
            continue
        reference = f"LED-{fields['idx']}"
        rows.append(
            Payment(
                token=(token := f"tok-{fields['idx']}"),
                token_claim=token,
                product_identity=reference,
                order_reference=reference,
                order_claim=order_key(reference),
                status=Payment.Status.VERIFIED,
                received_amount=fields["amount"],
                **fields,
            )
        )
    Payment.objects.bulk_create(rows, batch_size=5000)


def walk_ledger_of(
    ledger_env: dict[str, str], fake_url: str, number: int, n: int
) -> tuple[list[object], int, str]:
    """One walk over a list of ``n`` records (``number``: the list's place among the
    sizes, which days it is in), in the ledger's own database: its table row, its peak
    RSS (KiB), and its output when it failed. The walk's ``--json`` says what it found.
    """
    day = (dt.date(2026, 6, 20) + dt.timedelta(days=30 * number)).strftime("%Y%m%d")
    made = f"from bench.run import ledger_payments; ledger_payments({n}, {day!r})"
    run_command(ledger_env, "shell", "-c", made)
    since = (dt.datetime.strptime(day, "%Y%m%d") - dt.timedelta(days=n // 1440 + 2)).date()
    env = {**ledger_env, "KHALTI_BASE_URL": f"{fake_url.rstrip('/')}/ledger-{n}-{day}/"}
    code, took, rss, output = run_command(
        env, "khalti_reconcile", "--ledger", "--since", since.isoformat(), "--json"
    )
    found = re.search(r"^\{.*^\}", output, re.MULTILINE | re.DOTALL)
    report = json.loads(found.group(0)) if found else {}
    kinds = Counter(report.get("this_run", {}).get("entries", {}))
    row = [
        n,
        code,
        report.get("records_read", 0),
        report.get("pages_read", 0),
        *(kinds[kind] for kind in ("refunded_at_khalti", "foreign", "amount_differs", "missing")),
        f"{took:.1f}",
        f"{n / took:.0f}",
        f"{rss / 1024:.0f}",
    ]
    return row, rss, output[-400:] if code or not found else ""


def bench_ledger(server_env: dict[str, str], fake_url: str) -> None:
    """Section 6, in a database of its own: the walk expects every payment verified
    since its ``--since`` to be in Khalti's list, and the other sections' are not.
    """
    ledger_env = {**server_env, "DATABASE_URL": prepare_database("_ledger")}
    run_command(ledger_env, "migrate", "--verbosity", "0")
    _, _, idle_rss, _ = run_command(ledger_env, "check")
    rows, failures = [], []
    for number, n in enumerate(LEDGER_SIZES):
        note(f"ledger walk over {n} records")
        row, rss, failed = walk_ledger_of(ledger_env, fake_url, number, n)
        rows.append([*row, f"{(rss - idle_rss) / 1024:.0f}"])
        if failed:
            failures.append(f"The walk over {n} records failed: `{failed}`")
    drop_database(ledger_env["DATABASE_URL"])
    say(
        "## 6. The ledger walk: `khalti_reconcile --ledger` over Khalti's transaction list "
        "(pages of 50, each a minute apart)"
    )
    say()
    say(
        "Every 10th record was partly refunded in Khalti's dashboard, every 100th is "
        "foreign, every 250th is for another amount (`bench/ledger.py`). One process, "
        "Django's default connections, a database of its own; peak RSS is the process's "
        "own high-water mark (`VmHWM`)."
    )
    say()
    table(
        [
            "records",
            "exit",
            "read",
            "pages",
            "refunded at Khalti",
            "foreign",
            "other amount",
            "missing",
            "seconds",
            "records/s",
            "peak RSS MiB",
            "above `manage.py check` MiB",
        ],
        rows,
    )
    say(f"Peak RSS of `manage.py check` (Django and the app loaded): {idle_rss / 1024:.0f} MiB.")
    for line in failures:
        say(line)
    say()


# --- the machine ------------------------------------------------------------------------


def machine(database_url: str) -> list[str]:
    import django
    from django.db import connection

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            db = f"PostgreSQL {cursor.fetchone()[0]}"
        else:
            cursor.execute("SELECT sqlite_version()")
            db = f"SQLite {cursor.fetchone()[0]}"
    import gunicorn

    return [
        f"- Date: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- CPUs: {os.cpu_count()} × {model.group(1).strip() if model else 'unknown'}",
        f"- Memory: {int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "- Memory: unknown",
        f"- Python {platform.python_version()}, Django {django.get_version()}, "
        f"gunicorn {gunicorn.__version__}, requests {requests.__version__}, {db} "
        f"({urlsplit(database_url).scheme} database created by the bench)",
        f"- Settings: gunicorn {SERVED} per target; "
        f"fake Khalti latency {DELAY_MS:g} ms "
        f"(verify), HTTPS with a self-signed certificate trusted through REQUESTS_CA_BUNDLE; "
        f"load generator, fake Khalti, every server and the database on this one machine; "
        f"sections 2-5 on Django's default connections (CONN_MAX_AGE 0)",
    ]


def main() -> None:
    cert, key = make_certificate()
    fake_url = start_fake(cert, key)
    note(f"fake Khalti on {fake_url}")
    database_url = prepare_database()
    peer_database_url = prepare_database("_peer")
    env = {
        **os.environ,
        "REQUESTS_CA_BUNDLE": str(cert),
        "NO_PROXY": "127.0.0.1,localhost",
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "KHALTI_BASE_URL": fake_url,
        "KHALTI_TIMEOUT": KHALTI_TIMEOUT,
        "PYTHONPATH": os.pathsep.join([str(TESTPROJECT), str(ROOT)]),
    }
    # Django's defaults unless a target says otherwise (DJANGO_DB_POOL for the pooled one).
    for name in (
        "DJANGO_DEMO",
        "KHALTI_SECRET_KEY",
        "KHALTI_PUBLIC_KEY",
        "DJANGO_DATABASE_NAME",
        "DJANGO_LOG_FILE",
        "TESTPROJECT_FAIL_SETTLE_IF",
        "DJANGO_DEBUG",
        "DJANGO_CONN_MAX_AGE",
        "DJANGO_DB_POOL",
        "DJANGO_PG_OPTIONS",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ):
        env.pop(name, None)
    os.environ.clear()
    os.environ.update(env)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    create_limit_table()
    targets = make_targets(env, peer_database_url)
    migrate_peer(targets[-1])
    say("# dj-khalti benchmark")
    say()
    for line in machine(database_url):
        say(line)
    say()
    profiles: dict[str, dict | str] = {}
    try:
        results = bench_verify(targets)
        note("costs per verification")
        costs = bench_costs(targets)
        clients = max(LEVELS)
        for target in targets:
            if target.name not in CONFIGS:
                continue
            if PROFILE_REQUESTS <= 0:
                profiles[target.name] = "BENCH_PROFILE_REQUESTS=0"
                continue
            note(f"profiling {target.name} at {clients} clients")
            raw = profile(target, clients)
            profiles[target.name] = (
                summarise_profile(raw)
                if raw
                else f"py-spy failed; see {WORKDIR}/py-spy-{target.name}.log"
            )
    finally:
        for process in children[1:]:
            stop(process)
    report_verify(targets, results)
    report_costs(targets, costs)
    report_profiles(profiles, max(LEVELS))
    say("## 2. Overhead")
    say()
    naive1 = results[("naive", LEVELS[0])]["p50"]
    for target in targets:
        if target.name == "naive":
            continue
        p50 = results[(target.name, LEVELS[0])]["p50"]
        say(
            f"- {target.label}: p50 at {clients_word(LEVELS[0])} minus the fake's latency: "
            f"{p50:.1f} - {DELAY_MS:g} = **{p50 - DELAY_MS:.1f} ms** "
            f"({p50 - naive1:+.1f} ms against the naive view's {naive1 - DELAY_MS:.1f} ms)"
        )
    say()
    note("queries")
    report_queries(*bench_queries())
    note("breakdown")
    report_breakdown(bench_breakdown())
    note("PostgreSQL's CPU per statement")
    report_statement_cpu(bench_statement_cpu(database_url))
    note("reconcile")
    bench_reconcile(env, RECONCILE_ROWS)
    note("admin")
    bench_admin(ADMIN_ROWS)
    note("ledger walk")
    bench_ledger(env, fake_url)
    say(
        f"Total bench runtime: {time.monotonic() - STARTED:.0f} s. Counts used: {REQUESTS} requests per "
        f"level and target at {LEVELS} clients, {PROFILE_REQUESTS} profiled per configuration, "
        f"{ADMIN_ROWS:,} admin payments, {RECONCILE_ROWS:,} reconciled payments, "
        f"ledger walks over {LEDGER_SIZES} records."
    )
    from django.db import connections

    connections.close_all()
    drop_database(database_url)
    drop_database(peer_database_url)
    (BENCH / "results.md").write_text("\n".join(report) + "\n")
    print(f"\nwritten to {BENCH / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    finally:
        for process in reversed(children):
            stop(process)
