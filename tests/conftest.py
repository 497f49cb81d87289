import copy
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from django.db import OperationalError, connection, connections

from django_khalti.models import Payment
from django_khalti.signals import (
    payment_failed,
    payment_needs_review,
    payment_refunded,
    payment_verified,
)
from shop import receivers
from shop.models import Order

FIXTURES = Path(__file__).parent / "fixtures"
BASE_URL = "https://khalti.test/"
SECRET = "test_secret_key_testproject"
VERIFY_URL = BASE_URL + "api/v2/payment/verify/"
STATUS_URL = BASE_URL + "api/v2/payment/status/"


def fixture(name):
    """A canned Khalti body from tests/fixtures/<name>.json."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def transaction_record(amount=1000, state="Completed", idx="8xmeJnNXfoVjCvGcZiiGe7"):
    record = copy.deepcopy(fixture("verify_completed"))
    record["amount"] = amount
    record["state"]["name"] = state
    record["idx"] = idx
    return record


def epayment_started(**changes):
    """Khalti's answer to initiate, with a link good for the next 30 minutes."""
    from datetime import datetime, timedelta, timezone

    expires = datetime.now(timezone(timedelta(hours=5, minutes=45))) + timedelta(minutes=30)
    return {**fixture("epayment_initiate"), "expires_at": expires.isoformat(), **changes}


def race(*calls):
    """Run each call in its own thread with its own connection, released together."""
    barrier = threading.Barrier(len(calls))

    def one(call):
        try:
            barrier.wait(timeout=10)
            return call()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def _outcome_of(exc):
    """The kit's outcome for a ``requests`` exception, or None (then it is raised as is)."""
    if isinstance(exc, requests.exceptions.Timeout):  # ReadTimeout, ConnectTimeout
        return "timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection_error"
    return None


class Expectation:
    """A call the app must make: answered once (``times``) by the kit's ``choice``, and
    checked at teardown against the parameters the app must have sent."""

    def __init__(self, endpoint, key, params, *, subset=False, times=1):
        self.endpoint, self.key, self.params, self.subset, self.times = (
            endpoint,
            key,
            params,
            subset,
            times,
        )
        self.choice = None

    def __repr__(self):
        return f"<expected {self.endpoint} {self.key or '(any)'} {self.params}>"

    def problems(self):
        calls = self.choice.calls
        if self.times is None and not calls:
            yield f"{self!r} was never called"
        elif self.times is not None and len(calls) != self.times:
            yield f"{self!r} was called {len(calls)} time(s), not {self.times}"
        for call in calls:
            if not call.authorized:
                yield f"{self!r}: called without the Key header of {SECRET!r}"
            if self.params is None:
                continue
            sent = {
                k: v
                for k, v in call.params.items()
                if k != "idx" or self.endpoint not in ("refund", "transaction")
            }
            if self.subset:
                wrong = {
                    k: (sent.get(k, "(missing)"), v)
                    for k, v in self.params.items()
                    if sent.get(k, object()) != v
                }
                if wrong:
                    yield f"{self!r}: sent (got, expected) {wrong}"
            elif sent != self.params:
                yield f"{self!r}: sent {sent}"


class KhaltiExpectations:
    """Canned answers that are also expectations, over the testing kit's :class:`KhaltiFake`.

    Each helper call is one answer of the fake Khalti (``answer_next``, ``fail_next``
    or ``on_next``, for that endpoint and payment) *and* an expectation: at teardown
    every expectation must have been used exactly once (``times``), with exactly
    the parameters named and the right ``Authorization: Key`` header, and no call
    may have reached the fake without an expectation (``strict``).
    """

    def __init__(self, fake):
        self.fake = fake
        self.expectations = []
        #: Whether a call no expectation answered fails the test at teardown.
        self.strict = True

    def expect(
        self,
        endpoint,
        key=None,
        params=None,
        *,
        status=200,
        json=None,
        body=None,
        subset=False,
        times=1,
        delay=0,
        callback=None,
    ):
        """Expect a call to ``endpoint`` for ``key`` (token, idx, pidx or purchase order
        id) sending ``params`` (None: anything), answered with ``json`` / ``body`` (a
        text, or a ``requests`` exception) or by ``callback(request)`` (see
        ``KhaltiFake.on_next``)."""
        expectation = Expectation(endpoint, key, params, subset=subset, times=times)
        choose = {"key": key, "times": times, "delay": delay}
        if callback is not None:
            expectation.choice = self.fake.on_next(endpoint, callback, **choose)
        elif isinstance(body, BaseException):
            outcome = _outcome_of(body)
            if outcome is None:

                def raise_it(request, exc=body):
                    return exc

                expectation.choice = self.fake.on_next(endpoint, raise_it, **choose)
            else:
                expectation.choice = self.fake.fail_next(endpoint, outcome, **choose)
        else:
            expectation.choice = self.fake.answer_next(
                endpoint, status=status, json=json, body=body, **choose
            )
        self.expectations.append(expectation)
        return expectation

    def verify(self, token, amount, *, status=200, json=None, body=None, **kwargs):
        if json is None and body is None:
            json = transaction_record(amount=amount)
        return self.expect(
            "verify",
            token,
            {"token": token, "amount": amount},
            status=status,
            json=json,
            body=body,
            **kwargs,
        )

    def status(self, token, amount, state_fixture=None, *, status=200, json=None, **kwargs):
        """Khalti's status endpoint for this token and amount: a canned state, or ``json``."""
        if json is None and kwargs.get("body") is None:
            json = fixture(state_fixture)
        return self.expect(
            "status",
            token,
            {"token": token, "amount": str(amount)},
            status=status,
            json=json,
            **kwargs,
        )

    def complete(self, token, amount, idx=None):
        """Khalti completed this token's payment: status says ``Complete``, and the
        transaction record of ``idx`` (default ``idx-<token>``, as the page reported
        it) ties that answer to the payment."""
        idx = idx or f"idx-{token}"
        self.status(token, amount, "status_complete")
        self.not_a_transaction(token)
        return self.transaction(idx, json=transaction_record(amount=amount, idx=idx))

    def refused(self, token, amount):
        """Khalti refuses this token (HTTP 400 ``Invalid token.``), and its status
        endpoint, asked next, proves it: ``Error``, not found for this token and amount."""
        self.verify(token, amount, status=400, json=fixture("verify_invalid_token"))
        return self.status(token, amount, "status_error")

    def not_a_transaction(self, token):
        """Khalti's transaction endpoint knows no transaction whose idx is ``token``: what
        it answers for a real token, when the app checks that a token it is told is paid
        is not some payment's idx."""
        return self.transaction(token, status=404, json={"detail": "Not found."})

    def refund(self, idx, body=None, *, status=200, json=None, **kwargs):
        """Khalti's refund endpoint for ``idx``, expecting exactly ``body`` (``{}``: full)."""
        return self.expect(
            "refund",
            idx,
            body or {},
            status=status,
            json=fixture("refund_success") if json is None else json,
            **kwargs,
        )

    def transaction(self, idx, *, status=200, json=None, **kwargs):
        return self.expect(
            "transaction",
            idx,
            {},
            status=status,
            json=transaction_record(idx=idx) if json is None else json,
            **kwargs,
        )

    def initiate(self, amount, purchase_order_id, *, status=200, json=None, body=None, **extra):
        """ePayment initiate for this amount and order (checked on key and these fields)."""
        if json is None and body is None:
            json = epayment_started()
        expected = {"amount": amount, "purchase_order_id": purchase_order_id, **extra}
        return self.expect(
            "initiate",
            str(purchase_order_id),
            expected,
            subset=True,
            status=status,
            json=json,
            body=body,
        )

    def lookup(self, pidx, fixture_name=None, *, status=None, json=None, body=None, **changes):
        """ePayment lookup of ``pidx``: a canned body; Expired/User canceled come as HTTP 400."""
        if json is None and body is None:
            json = {**fixture(fixture_name), "pidx": pidx, **changes}
            if status is None:
                status = 400 if json["status"] in ("Expired", "User canceled") else 200
        return self.expect(
            "lookup", pidx, {"pidx": pidx}, status=status or 200, json=json, body=body
        )

    @property
    def calls(self):
        """Every call the app made to Khalti (the kit's ``KhaltiCall`` records)."""
        return self.fake.calls

    def calls_to(self, url):
        return [c for c in self.fake.calls if c.url.split("?")[0] == url]

    def check(self):
        """Every expectation met, and (``strict``) no call without one."""
        problems = [p for e in self.expectations for p in e.problems()]
        if self.strict:
            ours = {id(e.choice) for e in self.expectations}
            problems += [
                f"unexpected call to Khalti: {c.method} {c.url} {c.params}"
                for c in self.fake.calls
                if id(c.choice) not in ours
            ]
        assert not problems, "Khalti was not called as expected:\n  " + "\n  ".join(problems)


@pytest.fixture
def khalti_fake(khalti_fake, request):
    """The kit's fake Khalti (the plugin's, unchanged), for dj-khalti's own tests
    outside ``tests/kit``: they test the outbox itself and send its signals by hand
    (``django_capture_on_commit_callbacks``), so the kit's sending at the end of each
    request, and its failing of a test that left a signal unsent, are off there.
    ``tests/kit`` meets the kit as a shop does."""
    if request.path.parent.name != "kit":
        khalti_fake.signals.enabled = False
    return khalti_fake


@pytest.fixture
def expect_khalti(khalti_fake):
    """Strict expectations on the kit's fake Khalti (``khalti_fake``, the same object as
    the kit's ``khalti``): every call the app makes must be expected, and every expected
    call made, with the parameters named."""
    expectations = KhaltiExpectations(khalti_fake)
    yield expectations
    expectations.check()


class LostConnection:
    """The database loses the connection of the test's thread (the one a service runs
    in; Khalti's callbacks run in the client's threads), as when it restarts or an
    administrator ends the session. On PostgreSQL and MariaDB for real: ended from
    another connection (``pg_terminate_backend``, ``KILL CONNECTION``), and the app must
    open a new one itself. On SQLite (one in-memory database, which must outlive it) by
    a fault: every later statement naming one of ``rows`` fails as on a lost
    connection, until :meth:`restore`."""

    def __init__(self):
        self.victim = connections["default"]  # the test's thread's
        self.faults = []

    def lose(self, *rows):
        try:
            if self.victim.vendor == "sqlite":
                self._fail_statements_naming(rows)
            else:
                self._end_the_victim()
        finally:
            if connections["default"] is not self.victim:
                connections["default"].close()  # a callback's thread read ``rows``

    def _fail_statements_naming(self, rows):
        ids = {str(value) for row in rows for value in (row.pk, row.pk.hex)}

        def fail(execute, sql, params, many, context):
            if any(str(param) in ids for param in params or ()):
                raise OperationalError("server closed the connection unexpectedly")
            return execute(sql, params, many, context)

        self.victim.execute_wrappers.append(fail)
        self.faults.append(fail)

    def _end_the_victim(self):
        if self.victim.vendor == "postgresql":
            victim = self.victim.connection.info.backend_pid
            end = "SELECT pg_terminate_backend(%s)"
            gone = "SELECT 1 FROM pg_stat_activity WHERE pid = %s"
        else:
            victim = self.victim.connection.thread_id()
            end = "KILL CONNECTION %s"
            gone = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s"
        errors = []
        thread = threading.Thread(target=self._end, args=(victim, end, gone, errors))
        thread.start()
        thread.join()
        assert not errors, errors

    @staticmethod
    def _end(victim, end, gone, errors):
        """From a connection of its own: end ``victim``, and wait until it is gone."""
        try:
            with connection.cursor() as cursor:
                cursor.execute(end, [victim])
                for _ in range(500):
                    cursor.execute(gone, [victim])
                    if cursor.fetchone() is None:
                        return
                    time.sleep(0.01)
            errors.append(f"connection {victim} still there")
        except Exception as exc:  # reported in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    def restore(self):
        """SQLite: the statements work again (elsewhere the app reconnected by itself)."""
        while self.faults:
            self.victim.execute_wrappers.remove(self.faults.pop())


@pytest.fixture
def lost_connection():
    """A :class:`LostConnection`: ``lost_connection.lose(*rows)`` (e.g. from a slow
    Khalti's callback), ``lost_connection.restore()`` once the app has coped."""
    lost = LostConnection()
    yield lost
    lost.restore()


@pytest.fixture
def order(db):
    return Order.objects.create(reference="ORD-1", total=1000)


@pytest.fixture
def signals():
    """Every payment signal sent during the test, as (name, kwargs)."""
    sent = []

    def on_verified(sender, **kwargs):
        sent.append(("verified", sender, kwargs))

    def on_failed(sender, **kwargs):
        sent.append(("failed", sender, kwargs))

    def on_refunded(sender, **kwargs):
        sent.append(("refunded", sender, kwargs))

    def on_needs_review(sender, **kwargs):
        sent.append(("needs_review", sender, kwargs))

    payment_verified.connect(on_verified, weak=False)
    payment_failed.connect(on_failed, weak=False)
    payment_refunded.connect(on_refunded, weak=False)
    payment_needs_review.connect(on_needs_review, weak=False)
    yield sent
    payment_verified.disconnect(on_verified)
    payment_failed.disconnect(on_failed)
    payment_refunded.disconnect(on_refunded)
    payment_needs_review.disconnect(on_needs_review)


@pytest.fixture
def payload(order):
    """What the widget's onSuccess hands the page, for ``order``."""
    return {
        "idx": "8xmeJnNXfoVjCvGcZiiGe7",
        "token": "QUvsT4Y8aWd3zTVdLCbsNs",
        "amount": order.total,
        "mobile": "98XXXXXXX9",
        "product_identity": order.reference,
        "product_name": "Dragon",
        "product_url": "http://127.0.0.1:8000/orders/ORD-1/",
        "widget_id": "khalti-widget-1",
    }


__all__ = ["Payment", "fixture", "race", "transaction_record"]


@pytest.fixture
def no_shop_receivers():
    """The test project's own receivers off: what a test counts or hears is dj-khalti's
    (or the receivers the test connects itself)."""
    payment_verified.disconnect(receivers.mark_order_paid, sender=Payment)
    payment_failed.disconnect(receivers.note_failed_payment, sender=Payment)
    yield
    payment_verified.connect(receivers.mark_order_paid, sender=Payment)
    payment_failed.connect(receivers.note_failed_payment, sender=Payment)


@pytest.fixture(autouse=True)
def receivers_left_as_connected():
    """Each test leaves dj-khalti's signals' record of late receivers as it found it: a
    test that disconnects the shop's receiver and connects it again (to order it after
    one of its own) must not make it look connected late to the checks (W007) of the
    tests after it.
    """
    signals = (payment_verified, payment_failed, payment_refunded, payment_needs_review)
    saved = [dict(signal.late) for signal in signals]
    yield
    for signal, late in zip(signals, saved, strict=True):
        signal.late = late
