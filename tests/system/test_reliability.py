"""Proof under load and faults: the testproject under gunicorn with 4 worker
processes, on the test database (SQLite file, PostgreSQL or MariaDB, as
``DATABASE_URL`` says), verifying against a fake Khalti on a real loopback socket
(tests/rig.py, tests/fake_khalti.py).

Everything is asserted from the database (``Payment`` rows; the shop's
``OrderEvent`` rows, which its ``payment_verified`` receiver writes, count the
signals) and from the calls the fake Khalti received. ``khalti_reconcile`` runs
as a subprocess with the server's environment, as cron would run it.

Marked ``reliability``: ``make test PYTEST_ARGS="-m 'not reliability'"`` (or
``make test SKIP_RELIABILITY=1``) skips them; ``.ci/run`` always runs them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from django_khalti.conf import CALLS_PER_CLAIM, CLAIM_MARGIN
from django_khalti.models import Payment
from shop.models import Order, OrderEvent

from ..fake_khalti import FakeKhalti
from ..rig import TIMEOUT, WORKERS, Rig

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]

#: A claim older than this is stale (conf.KhaltiSettings.stale_after, with the rig's TIMEOUT).
STALE_AFTER = TIMEOUT * CALLS_PER_CLAIM + CLAIM_MARGIN
_serial = itertools.count()


@pytest.fixture(scope="module")
def fake():
    with FakeKhalti(slow_for=TIMEOUT + 1.5) as fake:
        yield fake


@pytest.fixture(scope="module")
def rig(django_db_setup, django_db_blocker, fake, tmp_path_factory):
    from django.conf import settings

    # pytest-django has put the test database's name here.
    name = settings.DATABASES["default"]["NAME"]
    with Rig(name, fake.url, tmp_path_factory.mktemp("rig")) as rig:
        yield rig
    assert_no_secret_in_the_logs(rig)


def assert_no_secret_in_the_logs(rig):
    """Checked when the module's rig stops: every test here ran against these 4
    workers with dj-khalti's and urllib3's loggers at DEBUG; their log (and
    gunicorn's) holds the traffic, but never the secret key."""
    from ..fake_khalti import SECRET

    django_log = rig.log_file.read_text()
    assert "django_khalti" in django_log
    assert "DEBUG" in django_log
    for log in (django_log, rig.server_log.read_text()):
        assert SECRET not in log


@pytest.fixture(autouse=True)
def fresh(rig, fake):
    fake.reset()
    rig.fail_settle_marker.unlink(missing_ok=True)
    yield
    fake.release.set()
    fake.clear()
    rig.fail_settle_marker.unlink(missing_ok=True)


def new_order(total: int) -> Order:
    return Order.objects.create(reference=f"REL-{os.getpid()}-{next(_serial)}", total=total)


def widget(order: Order, token: str, amount: int | None = None) -> dict:
    """The widget's onSuccess payload for ``order``, with the ``idx`` Khalti's widget
    hands the page (the fake's transaction ids are ``idx-<token>``)."""
    return {
        "token": token,
        "amount": order.total if amount is None else amount,
        "product_identity": order.reference,
        "idx": f"idx-{token}",
    }


def in_parallel(calls):
    """Run every call from its own thread, all released at once; their results in order."""
    barrier = threading.Barrier(len(calls))

    def one(call):
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def paid_events(order: Order) -> int:
    return OrderEvent.objects.filter(order_reference=order.reference, kind="paid").count()


def assert_nothing_double_verified(fake):
    assert not [t for t, n in fake.completions.items() if n > 1], "a token was verified twice"


def stale(payment: Payment) -> None:
    """Let time pass for a claim: date it back beyond the stale limit, as if the
    ``STALE_AFTER`` seconds a dead worker's claim must wait had gone by."""
    Payment.objects.filter(pk=payment.pk).update(
        claimed_at=timezone.now() - timedelta(seconds=STALE_AFTER + 1)
    )


# --- load ---------------------------------------------------------------------------


def test_fifty_identical_submissions_verify_once(rig, fake):
    order = new_order(1000)
    token = fake.issue("tok-fifty", 1000)
    fake.delay = 0.3  # long enough for the submissions to overlap
    try:
        results = in_parallel([lambda: rig.post(widget(order, token))] * 50)
    finally:
        fake.delay = 0.0

    codes = Counter(code for code, _, _ in results)
    assert set(codes) <= {200, 409}, codes
    assert codes[200] >= 1
    assert all(body["code"] == "in_progress" for code, body, _ in results if code == 409)
    assert fake.count("verify", token) == 1, "Khalti's verify must be called exactly once"
    assert fake.completions[token] == 1
    payment = Payment.objects.get()
    assert (payment.status, payment.token, payment.amount) == (Payment.Status.VERIFIED, token, 1000)
    assert paid_events(order) == 1
    assert OrderEvent.objects.count() == 1
    order.refresh_from_db()
    assert order.paid


GARBAGE = [
    (b"not json", "application/json"),
    (b"{", "application/json"),
    (b"[]", "application/json"),
    (b"null", "application/json"),
    (b'{"token": 5}', "application/json"),
    (b'{"token": "t", "amount": "abc", "product_identity": "x"}', "application/json"),
    (b'{"token": "t", "amount": -5, "product_identity": "x"}', "application/json"),
    (b'{"token": "t", "amount": 1.5, "product_identity": "x"}', "application/json"),
    (b'{"token": "t", "amount": true, "product_identity": "x"}', "application/json"),
    (b'{"token": "t", "amount": 1000, "product_identity": "NO-SUCH-ORDER"}', "application/json"),
    (b'{"token": {"a": [1]}, "amount": 1000, "product_identity": ["x"]}', "application/json"),
    (
        json.dumps({"token": "x" * 20000, "amount": 1000, "product_identity": "y"}).encode(),
        "application/json",
    ),
    (b"token=&amount=&product_identity=", "application/x-www-form-urlencoded"),
    (b"token=t&amount=1000", "text/plain"),
    ('{"token": "\u0928\u0947\u092a\u093e\u0932", "amount": 10}'.encode(), "application/json"),
    (b"\xff\xfe\x00garbage", "application/json"),
]


def test_two_hundred_mixed_submissions_verify_only_what_was_paid(rig, fake):
    # Every order has its own total: a token Khalti issued for one amount cannot
    # verify another order's (Khalti checks the amount it is asked for).
    orders = [new_order(1000 + 10 * i) for i in range(40)]
    token_order: dict[str, Order] = {}

    def issue(token, order, amount=None):
        fake.issue(token, order.total if amount is None else amount)
        token_order[token] = order
        return token

    honest = [issue(f"honest-{i}", o) for i, o in enumerate(orders)]
    cheap = {i: issue(f"cheap-{i}", orders[i], orders[i].total // 10) for i in range(20, 30)}
    # Half of the cheap tokens get Khalti's record (for the cheap amount) back.
    for i in range(20, 25):
        fake.fault(cheap[i], "wrong_amount")
    second = {i: issue(f"second-{i}", orders[i]) for i in range(30, 40)}

    posts = []  # (kind, callable)
    for i in range(20):  # clean orders: the honest payload, three times
        posts += [("honest", lambda o=orders[i], t=honest[i]: rig.post(widget(o, t)))] * 3
    for i in range(20, 40):
        posts.append(("honest", lambda o=orders[i], t=honest[i]: rig.post(widget(o, t))))
    for i in range(20, 30):
        o = orders[i]
        # The client lies about the amount of a real payment...
        posts.append(("tampered", lambda o=o, t=honest[i]: rig.post(widget(o, t, o.total + 100))))
        # ...or paid a tenth and claims the order's total...
        posts.append(("tampered", lambda o=o, t=cheap[i]: rig.post(widget(o, t))))
        # ...or paid a tenth and says so: the shop's amount, not the client's, decides.
        posts.append(("tampered", lambda o=o, t=cheap[i]: rig.post(widget(o, t, o.total // 10))))
        # A token replayed on another order (for that order's amount).
        posts.append(("replayed", lambda o=orders[i + 10], t=honest[i]: rig.post(widget(o, t))))
    for i in range(30, 40):  # a second token for the same order
        posts.append(("second", lambda o=orders[i], t=second[i]: rig.post(widget(o, t))))
    garbage = itertools.cycle(GARBAGE)
    while len(posts) < 210:
        raw, content_type = next(garbage)
        posts.append(
            ("garbage", lambda raw=raw, ct=content_type: rig.post(None, raw=raw, content_type=ct))
        )
    assert len(posts) == 210
    random.Random(6).shuffle(posts)

    started = time.monotonic()
    results = in_parallel([call for _, call in posts])
    took = time.monotonic() - started

    by_kind: dict[str, Counter] = {}
    for (kind, _), (code, body, _) in zip(posts, results, strict=False):
        by_kind.setdefault(kind, Counter())[code] += 1
        assert code < 500, (kind, code, body)
        if code >= 400:
            assert (isinstance(body, dict) and body.get("code")) or kind == "garbage", (
                kind,
                code,
                body,
            )
    assert set(by_kind["garbage"]) <= {400, 404, 409, 415}, by_kind["garbage"]
    assert 200 not in by_kind["tampered"], by_kind
    assert 200 not in by_kind["replayed"], by_kind

    verified = list(Payment.objects.filter(status__in=Payment.PAID_STATUSES))
    for payment in verified:
        order = token_order[payment.token]
        assert payment.product_identity == order.reference, "a replayed token was verified"
        assert payment.amount == order.total == fake.issued[payment.token]
        assert not payment.token.startswith("cheap-"), "a tampered payment was verified"
    per_order = Counter(p.product_identity for p in verified)
    assert max(per_order.values()) == 1, "an order was paid twice"
    # Two tokens paying an order in full never both moved the buyer's money. (A
    # cheap token Khalti completed for its own amount is then failed, and lets go
    # of the order.)
    completed_per_order = Counter(
        token_order[t].reference
        for t, n in fake.completions.items()
        if n and fake.issued[t] == token_order[t].total
    )
    assert max(completed_per_order.values()) == 1
    assert_nothing_double_verified(fake)
    for order in orders:
        assert paid_events(order) == per_order[order.reference]
    # The clean orders, untouched by any attack, are all paid with their token.
    for i in range(20):
        assert (
            Payment.objects.get(
                product_identity=orders[i].reference, status=Payment.Status.VERIFIED
            ).token
            == honest[i]
        )
    assert OrderEvent.objects.filter(kind="paid").count() == len(verified)
    print(f"200 mixed submissions in {took:.1f} s: {by_kind}")


# --- Khalti's faults ------------------------------------------------------------------

#: fault (tests/fake_khalti.py: the kit's outcome names, where the kit has one) ->
#: (what the buyer's client gets, whether Khalti completed the verification).
FAULTS = {
    "timeout_after_processing": (504, True),  # Khalti did it; the answer came after TIMEOUT
    "reset_after_processing": (503, True),  # Khalti did it; the connection was reset first
    "connection_error": (503, False),  # the connection was reset before Khalti saw it
    "server_error": (502, False),
    "truncated_json": (502, True),
    "amount_as_string": (502, True),
    "no_state": (502, True),
    "unauthorized": (502, False),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_khalti_fault_leaves_the_payment_pending_and_is_settled_once(rig, fake, fault):
    expected_code, completed = FAULTS[fault]
    # Two orders: one settled by the buyer's resubmission, one by khalti_reconcile.
    resubmitted, reconciled = new_order(1500), new_order(2500)
    tokens = {o.pk: fake.issue(f"{fault}-{o.pk}", o.total) for o in (resubmitted, reconciled)}
    for token in tokens.values():
        fake.fault(token, fault)

    results = in_parallel(
        [lambda o=o: rig.post(widget(o, tokens[o.pk])) for o in (resubmitted, reconciled)]
    )

    for code, body, took in results:
        assert code == expected_code, (code, body)
        assert body["code"] == "khalti_unavailable"
        assert took <= TIMEOUT + 1, f"the request took {took:.2f} s"
    assert set(Payment.objects.values_list("status", flat=True)) == {Payment.Status.PENDING}
    assert not OrderEvent.objects.exists()

    fake.clear()  # Khalti is well again
    code, body, _ = rig.post(widget(resubmitted, tokens[resubmitted.pk]))
    assert (code, body["status"]) == (200, "verified"), body
    result = rig.reconcile()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 verified" in result.stdout

    for order in (resubmitted, reconciled):
        payment = Payment.objects.get(product_identity=order.reference)
        assert payment.status == Payment.Status.VERIFIED, payment.failure_reason
        assert payment.amount == order.total
        assert paid_events(order) == 1
        token = tokens[order.pk]
        assert fake.completions[token] == 1
        # A verification Khalti completed is never asked for again: its status is.
        assert fake.count("verify", token) == (1 if completed else 2)
        assert fake.count("status", token) == 1
    assert not OrderEvent.objects.exclude(kind="paid").exists()
    assert_nothing_double_verified(fake)


@pytest.mark.parametrize(
    ("answer", "code", "status", "event"),
    [
        ("rejected", "verification_failed", Payment.Status.FAILED, "payment_failed"),
        # Money moved for another amount: never paid, never failed; a person decides.
        ("wrong_amount", "needs_review", Payment.Status.NEEDS_REVIEW, None),
    ],
)
def test_khaltis_refusal_or_another_amount_is_settled_once_and_never_paid(
    rig, fake, answer, code, status, event
):
    order = new_order(1200)
    token = fake.issue(f"{answer}-tok", 1200)
    fake.fault(token, answer, amount=120)

    code_, body, _took = rig.post(widget(order, token))

    assert (code_, body["code"]) == (400, code), body
    payment = Payment.objects.get()
    assert payment.status == status
    assert not paid_events(order)
    assert list(OrderEvent.objects.values_list("kind", flat=True)) == (
        ["payment_failed"] if event else []
    )
    assert fake.count("verify", token) == 1
    order.refresh_from_db()
    assert not order.paid


# --- the money-safety scenarios (issue 12), through gunicorn -------------------------------


def test_a_retry_while_khalti_still_processes_the_first_verify_is_verified_once(rig, fake):
    """Khalti is still processing the first verify when our TIMEOUT fires; the buyer's
    page retries at once; Khalti says Confirmed, so the app verifies again; Khalti
    completes the first and refuses the repeat. The refusal is not final after an
    unknown outcome: the app asks status, and the payment is verified, once."""
    order = new_order(2100)
    token = fake.issue("processing-tok", 2100)
    fake.fault(token, "processing")

    code, body, took = rig.post(widget(order, token))
    assert (code, body.get("code")) == (504, "khalti_unavailable"), body
    assert took <= TIMEOUT + 1, f"the request took {took:.2f} s"
    assert not fake.completions[token]  # Khalti is still at it

    code, body, _ = rig.post(widget(order, token))  # the page's retry

    assert (code, body["status"]) == (200, "verified"), body
    assert fake.completions[token] == 1
    assert fake.count("verify", token) == 2  # the repeat was refused by Khalti
    payment = Payment.objects.get()
    assert (payment.status, payment.idx) == (Payment.Status.VERIFIED, f"idx-{token}")
    assert paid_events(order) == 1
    assert not OrderEvent.objects.filter(kind="payment_failed").exists()
    # The order is paid (the shop's resolver hides it now): a second token is
    # refused before Khalti.
    second = fake.issue("processing-second", 2100)
    code, body, _ = rig.post(widget(order, second))
    assert (code, body.get("code")) == (404, "unknown_order"), body
    assert not fake.completions[second]


def test_one_payments_idx_sent_as_another_orders_token_never_pays_it(rig, fake):
    """Order A's idx, posted as order B's token: refused before Khalti once the app
    knows the idx; and when it does not yet (A's page forwarded none, its verify
    answer was lost), Khalti's status answers Complete for that idx, which nothing
    ties to B: B needs review, and is never verified."""
    a, b, c = new_order(1300), new_order(1300), new_order(1300)
    known = fake.issue("known-a", 1300)
    assert rig.post(widget(a, known))[0] == 200
    code, body, _ = rig.post(widget(b, f"idx-{known}"))
    assert (code, body.get("code")) == (409, "token_used"), body
    assert fake.count("verify", f"idx-{known}") == 0

    hidden = fake.issue("hidden-c", 1300)
    fake.fault(hidden, "reset_after_processing")  # Khalti completed it; the answer was lost
    payload = widget(c, hidden)
    del payload["idx"]
    assert rig.post(payload)[0] in (502, 503, 504)
    fake.clear(hidden)
    attack = widget(b, f"idx-{hidden}")
    fake.fault(attack["token"], "server_error")  # verify's answer unknown, once
    assert rig.post(attack)[0] == 502
    fake.clear(attack["token"])

    code, body, _ = rig.post(attack)

    assert (code, body.get("code")) == (400, "needs_review"), body
    payment_b = Payment.objects.get(order_reference=b.reference)
    assert payment_b.status == Payment.Status.NEEDS_REVIEW
    assert payment_b.idx is None
    assert not paid_events(b)
    assert fake.completions[hidden] == 1


def test_two_spellings_of_one_order_never_make_two_payments(rig, fake):
    """The shop's resolver looks references up whatever their case and names the
    order's own reference: "rel-..." and "REL-..." are one order, one claim."""
    order = new_order(1400)
    first = fake.issue("spelling-lower", 1400)
    second = fake.issue("spelling-upper", 1400)
    fake.fault(first, "reset_after_processing")
    lower = {**widget(order, first), "product_identity": order.reference.lower()}
    assert rig.post(lower)[0] in (502, 503, 504)
    fake.clear(first)

    results = in_parallel([lambda: rig.post(widget(order, second)), lambda: rig.post(lower)])

    # The one that settles the first payment gets 409 already_paid (or 200, if it is
    # the first's own resubmission); the other 409 in_progress while that claim holds.
    # The second token, once the order is paid, names an order the shop's resolver
    # no longer offers: 404 unknown_order, as for any paid order.
    codes = sorted(code for code, _, _ in results)
    assert codes in ([200, 409], [200, 200], [409, 409], [200, 404]), results
    if 404 in codes:
        assert (results[0][0], results[0][1]["code"]) == (404, "unknown_order"), results
    assert fake.completions[first] == 1
    assert not fake.completions[second]
    payment = Payment.objects.get(status=Payment.Status.VERIFIED)
    assert (payment.token, payment.order_reference) == (first, order.reference)
    # The second token, if it was told to wait, is kept waiting for the order: it
    # holds no claim on it, and Khalti never verified it.
    others = Payment.objects.exclude(pk=payment.pk)
    assert all((p.token, p.status, p.order_claim) == (second, "pending", None) for p in others)
    assert paid_events(order) == 1


# --- our side failing ------------------------------------------------------------------


def test_the_database_failing_after_khalti_answered_loses_nothing(rig, fake):
    """The settle UPDATE fails (testproject/faults.py) after Khalti verified."""
    order = new_order(1700)
    token = fake.issue("db-fails", 1700)
    rig.fail_settle_marker.touch()

    code, body, took = rig.post(widget(order, token))

    assert code in (502, 503), body
    assert took <= TIMEOUT + 1
    assert fake.completions[token] == 1  # Khalti moved the money
    payment = Payment.objects.get()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is not None

    rig.fail_settle_marker.unlink()  # the database is back
    # The claim is not stale yet: a resubmission waits instead of asking Khalti again...
    code, body, _ = rig.post(widget(order, token))
    assert (code, body["code"]) == (409, "in_progress"), body
    # ...and so does reconciliation.
    result = rig.reconcile()
    assert result.returncode == 0, result.stderr
    assert Payment.objects.get().status == Payment.Status.PENDING
    assert fake.count("status", token) == 0

    stale(payment)
    result = rig.reconcile()
    assert result.returncode == 0, result.stdout + result.stderr
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert paid_events(order) == 1
    assert fake.count("verify", token) == 1
    assert fake.count("status", token) == 1
    assert_nothing_double_verified(fake)


@pytest.mark.parametrize("completed", [True, False], ids=["khalti-completed", "khalti-did-not"])
def test_a_worker_killed_mid_verification_leaves_a_pending_payment_reconciliation_settles(
    rig, fake, completed
):
    order = new_order(1900)
    token = fake.issue(f"killed-{completed}", 1900)
    fake.fault(token, "hold", complete=completed)
    outcome: list[object] = []

    def buyer():
        try:
            outcome.append(rig.post(widget(order, token), timeout=20)[0])
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=buyer)
    thread.start()
    try:
        assert fake.holding.wait(10), "the verification never reached Khalti"
        port = fake.peers[token][-1][1]
        worker = rig.worker_with_connection_from(port)
        assert worker is not None, "no gunicorn worker holds the connection to Khalti"
        os.kill(worker, signal.SIGKILL)
        thread.join(10)
    finally:
        fake.clear()
        fake.release.set()
    assert not thread.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError), outcome

    payment = Payment.objects.get()
    assert payment.status == Payment.Status.PENDING
    assert payment.claimed_at is not None
    # The dead worker's claim is fresh: nobody takes it over yet.
    result = rig.reconcile()
    assert result.returncode == 0, result.stderr
    assert Payment.objects.get().status == Payment.Status.PENDING

    stale(payment)
    result = rig.reconcile()
    assert result.returncode == 0, result.stdout + result.stderr
    payment.refresh_from_db()
    assert payment.status == Payment.Status.VERIFIED
    assert paid_events(order) == 1
    assert fake.completions[token] == 1
    assert fake.count("verify", token) == (1 if completed else 2)
    assert_nothing_double_verified(fake)

    # gunicorn replaces the worker; the next test has all four again.
    deadline = time.monotonic() + 20
    while len(rig.worker_pids()) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker not in rig.worker_pids()


def test_a_worker_killed_by_gunicorns_timeout_inside_a_receiver_loses_no_signal(
    fake, tmp_path_factory
):
    """Issue 13's reproduction: one worker, ``--timeout 4``, a receiver that sleeps 10 s
    ahead of the shop's. gunicorn kills the worker (SystemExit, which send_robust does
    not catch) after the status committed and before the shop's receiver ran. The
    signal stays in the outbox; after the grace period, ``khalti_reconcile`` delivers it."""
    from django.conf import settings

    from django_khalti.models import SignalDelivery

    workdir = tmp_path_factory.mktemp("timeout-rig")
    slow = workdir / "slow-receiver"
    env = {"TESTPROJECT_SLOW_RECEIVER_IF": str(slow), "KHALTI_SIGNAL_GRACE_PERIOD": "2"}
    name = settings.DATABASES["default"]["NAME"]
    with Rig(name, fake.url, workdir, workers=1, worker_timeout=4, env=env) as rig:
        order = new_order(2100)
        token = fake.issue("receiver-killed", 2100)
        slow.touch()
        try:
            status = rig.post(widget(order, token), timeout=30)[0]
        except requests.RequestException:
            status = None  # the worker died with the connection
        assert status != 200, "the worker was not killed in the receiver"
        payment = Payment.objects.get(token=token)
        assert payment.status == Payment.Status.VERIFIED
        assert paid_events(order) == 0  # the shop's receiver never ran
        delivery = SignalDelivery.objects.get(payment=payment)
        assert (delivery.attempts, delivery.delivered_at) == (1, None)

        slow.unlink()
        time.sleep(2.5)  # the grace period
        result = rig.reconcile()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "signals delivered again 1, still undelivered 0" in result.stdout
    assert paid_events(order) == 1
    assert Order.objects.get(pk=order.pk).paid
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None
    assert fake.completions[token] == 1
