"""dj-khalti's signals in a test's transaction, sent as production sends them.

dj-khalti writes a status change's signal to its outbox and sends it once the
transaction commits (``transaction.on_commit``). pytest-django's ``db`` runs
each test in a transaction that never commits, so those sends never happen on
their own. :class:`KhaltiSignalSender` sends them at the moment production
would: when a request made through Django's test client ends, and only the
test's own transactions are left open (the request's own have ended, which in
production commits them). The shop's own ``on_commit`` callbacks are left as
Django leaves them in tests.

What is still unsent when the test ends (a service or command called from the
test itself) is named by :func:`undelivered`, which the pytest plugin turns
into a failure that says how to send it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from django.core.signals import request_finished, request_started
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F

from ..models import SignalDelivery
from ..services.outbox import deliver

#: Django's pending after-commit callback: savepoint ids, the callback, robust
#: (django-stubs knows it without the last).
_Pending = tuple[Any, ...]


def is_khalti_delivery(callback: object) -> bool:
    """Whether ``callback``, an ``on_commit`` callback, is dj-khalti's sending of a signal."""
    return isinstance(callback, partial) and callback.func is deliver


def _deliveries(connection: BaseDatabaseWrapper) -> list[_Pending]:
    """dj-khalti's signal sends waiting for ``connection``'s commit."""
    return [entry for entry in connection.run_on_commit if is_khalti_delivery(entry[1])]


def _only_the_tests_transactions(connection: BaseDatabaseWrapper) -> bool:
    """Whether the transactions open on ``connection`` are all the test case's own
    (which never commit), and none of them is broken: what production commits now.
    """
    return (
        connection.in_atomic_block
        and not connection.needs_rollback
        and all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)
    )


class KhaltiSignalSender:
    """Sends dj-khalti's signals when a request through the test client ends.

    :meth:`connect` it for a test and :meth:`disconnect` it after. While
    connected, the sends a request scheduled for after its commit are run
    as the request ends, and taken off the connection's list, so that a
    ``django_capture_on_commit_callbacks(execute=True)`` around the request
    does not send them a second time. ``enabled`` False: nothing is sent (a
    test playing a worker that died between the commit and the send).
    """

    def __init__(self) -> None:
        self.enabled = True
        # Per database alias, what was waiting when the request started (held, so
        # that no id in it is reused meanwhile).
        self._waiting: dict[str, dict[int, _Pending]] | None = None

    def connect(self) -> None:
        """Start sending at the end of each request."""
        request_started.connect(self._started, dispatch_uid=self._uid)
        request_finished.connect(self._finished, dispatch_uid=self._uid)

    def disconnect(self) -> None:
        """Stop sending."""
        request_started.disconnect(dispatch_uid=self._uid)
        request_finished.disconnect(dispatch_uid=self._uid)

    @property
    def _uid(self) -> str:
        return f"django_khalti.testing.deliveries:{id(self)}"

    def _started(self, **kwargs: Any) -> None:
        # What was waiting before the request is not the request's to send.
        self._waiting = {
            connection.alias: {id(entry): entry for entry in connection.run_on_commit}
            for connection in connections.all(initialized_only=True)
        }

    def _finished(self, **kwargs: Any) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None or not self.enabled:
            return
        for connection in connections.all(initialized_only=True):
            if _only_the_tests_transactions(connection):
                self._send(connection, waiting.get(connection.alias, {}))

    @staticmethod
    def _send(connection: BaseDatabaseWrapper, before: dict[int, _Pending]) -> None:
        """Run the request's sends on ``connection``, and any that a receiver's own
        change of a payment schedules meanwhile, in the order they were scheduled.
        """
        while sends := [entry for entry in _deliveries(connection) if id(entry) not in before]:
            sent = {id(entry) for entry in sends}
            connection.run_on_commit = [e for e in connection.run_on_commit if id(e) not in sent]
            for _, callback, _ in sends:
                callback()


def undelivered() -> Iterator[SignalDelivery]:
    """dj-khalti's signals scheduled for a commit that never came, and never sent:
    their send is still on a connection's list, and nobody ran it since.
    """
    for connection in connections.all(initialized_only=True):
        pending = [entry[1] for entry in _deliveries(connection)]
        if not pending or connection.needs_rollback:
            continue
        ids = [callback.args[0].pk for callback in pending]
        try:
            rows = list(
                SignalDelivery.objects.using(connection.alias)
                .filter(pk__in=ids, delivered_at=None, attempts_finished__lt=F("attempts"))
                .select_related("payment")
                .order_by("created_at", "pk")
            )
        except DatabaseError:
            continue  # a test that broke its transaction: nothing could be sent anyway
        yield from rows


def explain(rows: list[SignalDelivery]) -> str:
    """Why ``rows`` were never sent, and how a test sends them."""
    names = ", ".join(
        f"{row.signal} of payment {row.payment_id} (order {row.payment.order_reference or '?'})"
        for row in rows
    )
    return (
        f"dj-khalti's signal was never sent to your receivers: {names}.\n"
        "dj-khalti sends its signals once the transaction that changed the payment "
        "commits, and this test's transaction never commits (pytest-django rolls it "
        "back). The khalti fixture sends them when a request through the test client "
        "ends; this change was made outside one: by a service, a management command "
        "(khalti_reconcile) or a view (RequestFactory) called from the test itself.\n"
        "Make that call inside\n"
        "    with django_capture_on_commit_callbacks(execute=True):\n"
        "(Your receivers then run as they would after the commit.)"
    )
