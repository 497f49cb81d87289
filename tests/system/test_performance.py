"""Guards for speed: the queries a verification, a resubmission, an ePayment return and
the admin's list cost; the indexes the admin's search and status filter use; and the one
pooled HTTP session every call to Khalti goes through.

These are not timing tests: they pin counts and plans, which do not depend on the
machine. Counts are taken in ``transaction=True`` tests, where the app's transactions
are real (not savepoints inside the test's own transaction), and without the shop's
signal receivers (their queries are the shop's, not dj-khalti's).
"""

import json
import re
from datetime import timedelta

import pytest
import requests
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_khalti import client as khalti_client
from django_khalti.client import KhaltiClient, get_session
from django_khalti.models import Payment, order_key

from ..epayment.test_epayment import PIDX, come_back, started
from ..fake_khalti import FakeKhalti

VERIFY = reverse("django_khalti:verify")
CHANGELIST = reverse("admin:django_khalti_payment_changelist")
OVERVIEW = reverse("admin:django_khalti_payment_overview")
EXPORT = reverse("admin:django_khalti_payment_export")
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def statements(queries):
    """The SQL statements run, without BEGIN/COMMIT (which cost no query of their own
    on every backend)."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].lstrip().upper().startswith(TRANSACTION_CONTROL)
    ]


def commits(queries):
    return sum(q["sql"].strip().upper() == "COMMIT" for q in queries.captured_queries)


def kinds(sql_list):
    """``["SELECT django_khalti_payment", "INSERT django_khalti_payment", ...]``."""
    out = []
    for sql in sql_list:
        if sql.lstrip().upper().startswith("WITH"):  # writes in one statement
            writes = re.findall(r"\((UPDATE|INSERT INTO) \W?(\w+)", sql)
            out.append(" + ".join(f"{verb.split()[0]} {table}" for verb, table in writes))
            continue
        while re.search(r"\([^()]*\)", sql):  # subqueries (an EXISTS) are not the statement's table
            sql = re.sub(r"\([^()]*\)", "", sql)
        verb = sql.split()[0].upper()
        table = (
            sql.split(" FROM ", 1)[-1]
            if verb == "SELECT"
            else sql.split()[2 if verb != "UPDATE" else 1]
        )
        out.append(f"{verb} {table.split()[0].strip(chr(34) + '`')}")
    return out


def post(client, payload):
    return client.post(VERIFY, data=json.dumps(payload), content_type="application/json")


# --- the verify endpoint -------------------------------------------------------------


#: What a settlement costs after Khalti answered: on PostgreSQL one statement (the
#: guarded UPDATE, returning the times it stamped, and the outbox row in a
#: data-modifying WITH); elsewhere a transaction that reads those times back.
SETTLEMENT = {
    "postgresql": ["UPDATE django_khalti_payment + INSERT django_khalti_signaldelivery"],
}
SETTLEMENT_IN_A_TRANSACTION = [
    "BEGIN",
    "UPDATE django_khalti_payment",
    "SELECT django_khalti_payment",
    "INSERT django_khalti_signaldelivery",
    "COMMIT",
]


def round_trips(queries):
    """Every statement sent, BEGIN and COMMIT included, as :func:`kinds` names them."""
    sent = [q["sql"].strip() for q in queries.captured_queries]
    return [
        sql.split()[0].upper() if sql.upper().startswith(("BEGIN", "COMMIT")) else kinds([sql])[0]
        for sql in sent
    ]


def settlement():
    return SETTLEMENT.get(connection.vendor, SETTLEMENT_IN_A_TRANSACTION)


#: A signal delivered: marked so, then the payment's next undelivered signal, if
#: any, looked for (it follows at once: a payment's signals go in order). On
#: PostgreSQL one statement (issue 27): the mark in a data-modifying WITH, the
#: look in the SELECT after it; elsewhere two.
DELIVERED = {"postgresql": ["UPDATE django_khalti_signaldelivery"]}
DELIVERED_IN_TWO = ["UPDATE django_khalti_signaldelivery", "SELECT django_khalti_signaldelivery"]


def delivered():
    return DELIVERED.get(connection.vendor, DELIVERED_IN_TWO)


@pytest.mark.django_db(transaction=True)
def test_a_first_verification_costs_five_round_trips_on_postgresql_with_the_resolver(
    client, expect_khalti, payload, no_shop_receivers
):
    expect_khalti.verify(payload["token"], 1000)
    with CaptureQueriesContext(connection) as queries:
        response = post(client, payload)
    assert response.status_code == 200, response.content
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    # Is the token known? The shop's amount (its resolver); the claim (one insert,
    # committed on its own before Khalti is called); the settlement and its signal
    # in the outbox; the signal marked delivered once the receivers ran, and whether
    # a later signal of the payment waits to follow it (issue 25: in order), which
    # on PostgreSQL is one statement (issue 27: six round trips before).
    expected = [
        "SELECT django_khalti_payment",
        "SELECT shop_order",
        "INSERT django_khalti_payment",
        *settlement(),
        *delivered(),
    ]
    assert round_trips(queries) == expected, "\n".join(statements(queries))
    if connection.vendor == "postgresql":
        assert len(queries) == 5
        marked_then_next = statements(queries)[-1]
        assert marked_then_next.startswith("WITH marked AS (UPDATE"), marked_then_next
        assert "AS next_signal" in marked_then_next, marked_then_next


@pytest.mark.skipif(connection.vendor != "postgresql", reason="synchronous_commit: PostgreSQL's")
@pytest.mark.django_db(transaction=True)
def test_a_first_verification_waits_for_the_disk_twice_on_postgresql(
    client, expect_khalti, payload, no_shop_receivers
):
    """Of its writes (each a statement committed on its own), the claim and the
    settlement wait for the disk; the delivered mark does not (issue 27: lost in a
    crash of the database, it only means one more delivery)."""
    expect_khalti.verify(payload["token"], 1000)
    with CaptureQueriesContext(connection) as queries:
        assert post(client, payload).status_code == 200
    writes = [sql for sql in statements(queries) if not sql.lstrip().startswith("SELECT")]
    unflushed = "set_config('synchronous_commit', 'off', true)"
    assert kinds([sql for sql in writes if unflushed not in sql]) == [
        "INSERT django_khalti_payment",
        *SETTLEMENT["postgresql"],
    ]
    assert kinds([sql for sql in writes if unflushed in sql]) == [
        "UPDATE django_khalti_signaldelivery"
    ]
    assert commits(queries) == 0  # no transaction of its own: each statement commits


@pytest.mark.django_db(transaction=True)
def test_an_idempotent_resubmission_costs_one_query(
    client, expect_khalti, payload, no_shop_receivers
):
    expect_khalti.verify(payload["token"], 1000)
    assert post(client, payload).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = post(client, payload)
    assert response.status_code == 200
    assert response.json()["status"] == "verified"
    # The stored payment answers (with whether a signal of it is due to be delivered
    # again); neither Khalti nor the resolver is asked.
    assert kinds(statements(queries)) == ["SELECT django_khalti_payment"]
    assert commits(queries) == 0
    assert len(expect_khalti.calls) == 1


# --- the ePayment return ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_return_of_a_completed_epayment_costs_four_round_trips_on_postgresql(
    client, expect_khalti, order, no_shop_receivers
):
    started(client, expect_khalti, order)
    expect_khalti.lookup(PIDX, "epayment_lookup_completed")
    with CaptureQueriesContext(connection) as queries:
        response = come_back(client, status="Completed")
    assert response.status_code == 200
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    # The payment by pidx; the claim; the settlement and its signal; the signal
    # delivered (and the payment's next one looked for).
    assert round_trips(queries) == [
        "SELECT django_khalti_payment",
        "UPDATE django_khalti_payment",
        *settlement(),
        *delivered(),
    ], "\n".join(statements(queries))

    # Reloading the page: one read, Khalti not asked again.
    with CaptureQueriesContext(connection) as queries:
        assert come_back(client, status="Completed").status_code == 200
    assert len(statements(queries)) == 1
    assert commits(queries) == 0
    assert len(expect_khalti.calls_to("https://khalti.test/api/v2/epayment/lookup/")) == 1


# --- the admin's list ---------------------------------------------------------------


def add_payments(count, start=0):
    now = timezone.now()
    Payment.objects.bulk_create(
        Payment(
            token=f"tok-{n}",
            product_identity=f"ORD-{n}",
            amount=1000 + n,
            status=Payment.Status.VERIFIED if n % 2 else Payment.Status.PENDING,
            idx=f"idx-{n}" if n % 2 else None,
            mobile="98XXXXXXX9" if n % 2 else "",
            verified_at=now if n % 2 else None,
            order_claim=order_key(f"ORD-{n}"),
        )
        for n in range(start, start + count)
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "params", [{}, {"q": "ORD-1"}, {"status__exact": "pending"}], ids=["all", "search", "status"]
)
def test_the_changelist_costs_six_queries_for_10_or_200_payments(admin_client, params):
    def page_queries():
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(CHANGELIST, params)
        assert response.status_code == 200
        return statements(queries)

    add_payments(10)
    page_queries()  # warm caches (content types) before counting
    ten = page_queries()
    add_payments(190, start=10)
    many = page_queries()
    # The session and the user; then the payments: the count, the page, and the date
    # hierarchy's first/last and days. Nothing row by row.
    assert len(ten) == len(many) == 6, "\n".join(many)
    assert kinds(many)[:2] == ["SELECT django_session", "SELECT auth_user"]
    assert all(k == "SELECT django_khalti_payment" for k in kinds(many)[2:]), "\n".join(many)


# --- indexes ------------------------------------------------------------------------


def explain(sql):
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def many_payments(db):
    """3,000 payments like a shop's: most verified, a few pending, failed or refunded,
    each with Khalti's answer stored; then the statistics the planner uses."""
    answer = {
        "idx": "x" * 22,
        "type": {"idx": "t" * 22, "name": "Wallet payment"},
        "state": {"idx": "s" * 22, "name": "Completed", "template": "is complete"},
        "amount": 1000,
        "fee_amount": 30,
        "refunded": False,
        "user": {"idx": "u" * 22, "name": "Test User", "mobile": "98XXXXXXX9"},
        "merchant": {"idx": "m" * 22, "name": "Test Merchant", "mobile": "98XXXXXXX0"},
    }
    statuses = (
        [Payment.Status.PENDING] * 5
        + [Payment.Status.FAILED] * 3
        + [Payment.Status.REFUNDED] * 2
        + [Payment.Status.VERIFIED] * 90
    )
    now = timezone.now()
    rows = []
    for n in range(3000):
        status = statuses[n % len(statuses)]
        rows.append(
            Payment(
                token=f"tok-{n:06d}-{'k' * 14}",
                product_identity=f"ORD-{n:06d}",
                amount=1000 + n,
                status=status,
                idx=f"idx-{n:06d}-{'i' * 14}" if status != "pending" else None,
                mobile=f"98XXXX{n:04d}",
                khalti_response=answer,
                verified_at=now if status != "pending" else None,
                order_claim=order_key(f"ORD-{n:06d}") if status != "failed" else None,
            )
        )
    Payment.objects.bulk_create(rows, batch_size=500)
    # Spread over two years, as years of payments would be (8 hours apart).
    Payment.objects.update(created_at=now - timedelta(days=730))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE django_khalti_payment SET created_at = created_at + "
                "(substring(product_identity from 5)::int * interval '8 hours')"
            )
            # Verified when made: the overview's last 30 days are a sliver of the table.
            cursor.execute(
                "UPDATE django_khalti_payment SET verified_at = created_at "
                "WHERE verified_at IS NOT NULL"
            )
            cursor.execute("ANALYZE django_khalti_payment")
        elif connection.vendor == "mysql":
            cursor.execute("ANALYZE TABLE django_khalti_payment")
        else:
            cursor.execute("ANALYZE")


SEARCHES = {
    "token": "tok-000123-kkkkkkkkkkkkkk",
    "idx": "idx-000124-iiiiiiiiiiiiii",
    "order reference": "ORD-000125",
    "order reference prefix": "ORD-00012",
    "mobile": "98XXXX0127",
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "params",
    [{"q": q} for q in SEARCHES.values()]
    + [{"status__exact": "pending"}, {"status__exact": "failed"}],
    ids=[*list(SEARCHES), "status pending", "status failed"],
)
def test_the_changelists_search_and_status_filter_read_indexes(admin_client, many_payments, params):
    """Every query of the list reads an index, not the whole table: the search's lookups
    (exact ids and mobile, the reference's beginning) are each answered by an index and
    OR-ed in a bitmap; the status filter reads the status index. (Filtering by the
    status most payments have is rightly a scan of the table for its count.)"""
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    ours = [sql for sql in statements(queries) if "django_khalti_payment" in sql and "WHERE" in sql]
    assert len(ours) == 4, "\n".join(ours)  # count, page, date hierarchy's min/max and days
    if connection.vendor != "postgresql":
        return  # query plans are pinned on PostgreSQL, the production database; the count above holds everywhere
    for sql in ours:
        plan = explain(sql)
        assert "Seq Scan" not in plan, f"{sql}\n{plan}"
        assert "Index" in plan, f"{sql}\n{plan}"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pattern-ops twins: PostgreSQL's")
@pytest.mark.django_db
def test_a_payments_write_keeps_only_the_indexes_its_reads_use():
    """Django's ``varchar_pattern_ops`` twin of a text column serves ``LIKE 'x%'``
    only: kept for the two columns the admin searches by prefix, dropped for the
    others (migration 0015), which every insert and settlement would write for
    nothing (issue 27)."""
    with connection.cursor() as cursor:
        indexes = connection.introspection.get_constraints(cursor, Payment._meta.db_table)
    twins = {tuple(d["columns"]) for name, d in indexes.items() if name.endswith("_like")}
    assert twins == {("order_reference",), ("product_identity",)}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s", [Payment._meta.db_table]
        )
        assert cursor.fetchone()[0] == 16  # 24 before


@pytest.mark.django_db(transaction=True)
def test_the_overview_reads_indexes_not_two_years_of_payments(admin_client, many_payments):
    """The overview asks about the last 30 days: on two years of payments each of its
    queries reads an index (the chart the one on ``verified_at``), never the whole table."""
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    ours = [sql for sql in statements(queries) if "django_khalti_payment" in sql and "WHERE" in sql]
    assert any("verified_at" in sql for sql in ours), "\n".join(ours)
    if connection.vendor != "postgresql":
        return  # query plans are pinned on PostgreSQL, as for the changelist
    for sql in ours:
        plan = explain(sql)
        assert "Seq Scan on django_khalti_payment" not in plan, f"{sql}\n{plan}"


@pytest.mark.django_db(transaction=True)
def test_a_weeks_csv_reads_indexes_not_two_years_of_payments(admin_client, many_payments):
    """The CSV export of a week of two years of payments reads the rows of that week
    through the indexes on ``verified_at`` and ``created_at``, never the whole table."""
    week = timezone.localdate() - timedelta(days=365)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(
            EXPORT, {"start": week.isoformat(), "end": (week + timedelta(days=6)).isoformat()}
        )
        lines = response.getvalue().decode().splitlines()
    assert response.status_code == 200
    ours = [sql for sql in statements(queries) if "django_khalti_payment" in sql]
    assert len(ours) == 1, "\n".join(ours)
    if connection.vendor != "postgresql":
        return  # the payments are spread over two years, and plans pinned, on PostgreSQL
    assert 15 <= len(lines) - 1 <= 25  # a payment every 8 hours, verified when made
    plan = explain(ours[0].split(" CURSOR WITH HOLD FOR ", 1)[-1])
    assert "Seq Scan on django_khalti_payment" not in plan, f"{ours[0]}\n{plan}"


# --- one pooled session ----------------------------------------------------------------


def test_the_client_uses_one_pooled_session_per_process():
    session = get_session()
    assert isinstance(session, requests.Session)
    assert get_session() is session
    # A client is made per call and cheap: it holds no session of its own.
    client = KhaltiClient.from_settings()
    assert not any(isinstance(value, requests.Session) for value in vars(client).values())
    adapter = session.get_adapter("https://khalti.com/")
    assert adapter is session.get_adapter("http://127.0.0.1/")
    assert isinstance(adapter, requests.adapters.HTTPAdapter)
    assert adapter._pool_maxsize == khalti_client.POOL_MAXSIZE >= 8  # type: ignore[attr-defined]  # private: no public reader
    assert adapter.max_retries.total == 0  # a retried verify could move money twice


def test_calls_in_a_row_reuse_one_kept_alive_connection(settings):
    get_session().close()  # start from no open connection
    with FakeKhalti() as fake:
        settings.KHALTI = {**settings.KHALTI, "BASE_URL": fake.url}
        client = KhaltiClient.from_settings()
        for n in range(3):
            fake.issue(f"tok-{n}", 1000)
            assert client.verify(f"tok-{n}", 1000).amount == 1000
        client.status("tok-0", 1000)
        # One TCP connection (one client port) served every call.
        peers = {peer for token in fake.peers for peer in fake.peers[token]}
        assert len(peers) == 1, peers
        adapter = get_session().get_adapter(fake.url)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        manager = adapter.poolmanager
        pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118 (urllib3 refuses to iterate the container itself)
        [pool] = [p for p in pools if p.port == int(fake.url.rsplit(":", 1)[1].strip("/"))]
        assert (pool.num_connections, pool.num_requests) == (1, 4)
    get_session().close()


# --- the database connection while Khalti is asked ------------------------------------


@pytest.fixture
def pooled():
    """On PostgreSQL, Django's psycopg pool (``"OPTIONS": {"pool": True}``), as the
    the going-live guide recommends; elsewhere the connection as configured."""
    if connection.vendor != "postgresql":
        yield False
        return
    connection.close()
    connection.settings_dict["OPTIONS"]["pool"] = {"min_size": 1, "max_size": 2}
    yield True
    connection.close()
    connection.close_pool()  # type: ignore[attr-defined]  # PostgreSQL's wrapper
    del connection.settings_dict["OPTIONS"]["pool"]


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_serves_others_while_khalti_is_asked(
    client, khalti_fake, payload, pooled
):
    """With a pool, the request's connection is back in it during the call to Khalti
    (another request may use it); a connection that is not pooled is kept."""
    khalti_fake.add_payment(token=payload["token"], amount=1000)
    request_thread_connection = connections["default"]  # this thread's, not a proxy
    held_while_asked = []

    def watch(request):
        held_while_asked.append(request_thread_connection.connection is not None)

    khalti_fake.on_next("verify", watch)
    response = post(client, payload)
    assert response.status_code == 200, response.content
    assert Payment.objects.get().status == Payment.Status.VERIFIED
    assert held_while_asked == [not pooled]
