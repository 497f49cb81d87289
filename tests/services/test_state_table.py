"""The table "Khalti's answers, row by row" of docs/explanation/states.rst, played
against the app.

Each row of the table (endpoint, Khalti's answer, what the payment becomes, the signal)
has a scenario below that makes the shipped testing kit give that answer and checks
what the app did against the row's cells. A row without a scenario, or a scenario
without a row, fails: the table and the code cannot drift apart. Every status change a
scenario makes must also be an arrow of the page's state diagram.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.exceptions import KhaltiError
from django_khalti.models import Payment, Refund
from django_khalti.services import writes
from shop.models import Order

from .conftest import table_cells
from .test_state_diagram import drawn_edges

# Real commits: each signal is sent when its transition commits, as in production.
pytestmark = pytest.mark.django_db(transaction=True)

VERIFY_URL = reverse("django_khalti:verify")


@dataclass(frozen=True)
class Row:
    endpoint: str
    answer: str
    becomes: str
    signal: str

    @property
    def status(self) -> str | None:
        """The status the row names first (``verified``), if it names one."""
        found = re.match(r"``([a-z_]+)``", self.becomes)
        return found.group(1) if found else None

    @property
    def signal_name(self) -> str | None:
        found = re.fullmatch(r"``payment_([a-z_]+)``", self.signal)
        return found.group(1) if found else None


ROWS = [Row(*cells) for cells in table_cells("Khalti's answers, row by row", "Endpoint")]


# --- the world each scenario plays in ---------------------------------------------------


@dataclass
class World:
    client: Any
    khalti: Any
    sent: list
    order: Order = field(init=False)

    def __post_init__(self) -> None:
        self.next_order()

    def next_order(self) -> Order:
        """A new unpaid order of Rs 10, which the helpers below pay from now on."""
        self.order = Order.objects.create(reference=f"ORD-{Order.objects.count()}", total=1000)
        return self.order

    def post(self, payload: dict) -> Any:
        return self.client.post(VERIFY_URL, payload, content_type="application/json")

    def widget(self, **kwargs: Any) -> Any:
        return self.khalti.add_payment(amount=1000, **kwargs)

    def pending_widget(self, **kwargs: Any) -> tuple[Any, dict]:
        """A widget payment whose first verify never reached Khalti (a timeout)."""
        paid = self.widget(outcome="timeout", **kwargs)
        payload = paid.payload(self.order.reference)
        assert self.post(payload).status_code == 504
        return paid, payload

    def epayment(self) -> Any:
        start = self.client.post(
            reverse("django_khalti:epayment-start", args=[self.order.reference])
        )
        assert start.status_code == 302
        return self.khalti.last_epayment

    def come_back(self, epayment: Any) -> Any:
        return self.client.get(self.khalti.return_url(epayment))

    def payment(self) -> Payment:
        return Payment.objects.latest("created_at")

    def signals_since(self, mark: int) -> list[str]:
        return [name for name, _, _ in self.sent[mark:]]


@pytest.fixture
def world(client, khalti_fake, signals):
    return World(client, khalti_fake, signals)


@pytest.fixture
def status_changes(monkeypatch) -> list[tuple[str, str]]:
    """Every status change the app makes meanwhile, as (from, to): each module that
    calls ``writes._transition`` (the one place a status changes) calls a spy.
    """
    made: list[tuple[str, str]] = []
    transition = writes._transition

    def spy(payment, to, *, source=Payment.Status.PENDING, **kwargs):
        changed = transition(payment, to, source=source, **kwargs)
        if changed:
            made.append((str(source), str(to)))
        return changed

    callers = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("django_khalti.") and getattr(module, "_transition", None) is transition
    ]
    assert callers, "no module calls writes._transition"
    for module in callers:
        monkeypatch.setattr(module, "_transition", spy)
    return made


def check(world: World, row: Row, mark: int, payment: Payment | None = None) -> None:
    """The payment and the signals sent since ``mark`` are what the row says."""
    payment = payment or world.payment()
    payment.refresh_from_db()
    assert row.status is not None, row
    assert payment.status == row.status, (row, payment.failure_reason)
    if "(order let go)" in row.becomes:
        assert payment.order_claim is None
    if "(order kept)" in row.becomes:
        assert payment.order_claim is not None
    if "(its ``idx`` unknown)" in row.becomes:
        assert payment.idx is None
    assert world.signals_since(mark) == ([row.signal_name] if row.signal_name else []), row


# --- the scenarios, one per row --------------------------------------------------------

Scenario = Callable[[World, Row], None]
SCENARIOS: dict[tuple[str, str], Scenario] = {}


def scenario(endpoint: str, answer: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[(endpoint, answer)] = function
        return function

    return register


def verify_answers(world: World, row: Row, **answer: Any) -> None:
    paid = world.widget()
    world.khalti.answer_next("verify", **answer)
    mark = len(world.sent)
    world.post(paid.payload(world.order.reference))
    check(world, row, mark)


@scenario("verify", "200, ``Completed``, the expected amount")
def _(world, row):
    paid = world.widget()
    mark = len(world.sent)
    assert world.post(paid.payload(world.order.reference)).status_code == 200
    check(world, row, mark)


@scenario("verify", "200, ``Completed``, another amount")
def _(world, row):
    verify_answers(world, row, json=world.widget().record(amount=1100))


@scenario("verify", "200, ``Completed``, another payment's ``idx``")
def _(world, row):
    Payment.objects.create(
        token="other", product_identity="OTHER", amount=1000, idx="IDX-TAKEN",
        status=Payment.Status.VERIFIED, verified_at=timezone.now(),
    )  # fmt: skip
    record = world.widget().record()
    verify_answers(world, row, json={**record, "idx": "IDX-TAKEN"})


@scenario("verify", "200, ``Completed`` and ``refunded``")
def _(world, row):
    verify_answers(world, row, json={**world.widget().record(), "refunded": True})


@scenario("verify", "200, any other state")
def _(world, row):
    for state in ("Pending", "Initiated", "Processing"):
        record = world.widget().record()
        verify_answers(world, row, json={**record, "state": {"name": state}})
        world.next_order()


@scenario("verify", "400, a readable refusal; or 200, a record in a failed state")
def _(world, row):
    assert row.becomes.startswith("what status says next")
    assert row.signal == "(status's)"
    refusals: list[dict[str, Any]] = [
        {"status": 400, "json": {"token": ["Invalid token."]}},
        {"json": {**world.widget().record(), "state": {"name": "Failed"}}},
    ]
    cases = [("Confirmed", "pending", []), ("Error", "failed", ["failed"])]
    cases += [("Complete", "verified", ["verified"])]
    for refusal in refusals:
        for unknown_first in (False, True):  # the first attempt, or after a lost answer
            for then, status, signals in cases:
                world.next_order()
                if unknown_first:
                    paid, payload = world.pending_widget()
                    world.khalti.answer_next("status", json={"status": True, "state": "Confirmed"})
                else:
                    paid = world.widget()
                    payload = paid.payload(world.order.reference)
                world.khalti.answer_next("verify", **refusal)
                if then == "Complete":
                    paid.verified = True  # it did complete (the refused one was a repeat)
                world.khalti.answer_next("status", json={"status": True, "state": then})
                mark = len(world.sent)
                world.post(payload)
                assert world.payment().status == status, (refusal, unknown_first, then)
                assert world.signals_since(mark) == signals


@scenario(
    "verify",
    "a timeout, connection error, 5xx, 429, 401, or a body not JSON or of the wrong shape",
)
def _(world, row):
    for outcome in ("timeout", "connection_error", "server_error", "not_json", "unauthorized"):
        world.next_order()
        paid = world.widget(outcome=outcome)
        mark = len(world.sent)
        world.post(paid.payload(world.order.reference))
        check(world, row, mark)
    for answer in ({"status": 429, "json": {"detail": "slow"}}, {"json": {"idx": "x"}}):
        world.next_order()
        verify_answers(world, row, **answer)


def status_answers(world: World, row: Row, state: str | None, **setup: Any) -> Payment:
    paid, payload = world.pending_widget()
    if setup.get("verified"):
        paid.verified = True
    if setup.get("untied"):
        payload.pop("idx")
        Payment.objects.update(claimed_idx="")
    if state is not None:
        world.khalti.answer_next("status", json={"status": True, "state": state, "detail": "x"})
    mark = len(world.sent)
    world.post(payload)
    check(world, row, mark)
    return world.payment()


@scenario("status", (
    "``Complete``, the token no transaction's idx, and Khalti's record of the transaction "
    "Khalti's answer or the buyer's page names matches"
))  # fmt: skip
def _(world, row):
    payment = status_answers(world, row, "Complete", verified=True)
    assert payment.idx  # the record that tied it


@scenario("status", (
    "``Complete``, the token no transaction's idx, and no transaction named whose record "
    "matches"
))  # fmt: skip
def _(world, row):
    status_answers(world, row, "Complete", verified=True, untied=True)
    world.next_order()
    paid, payload = world.pending_widget()  # the page's idx is no transaction of Khalti's
    paid.verified = True
    world.khalti.answer_next("transaction", status=404, json={"detail": "Not found."})
    world.khalti.answer_next("transaction", status=404, json={"detail": "Not found."})
    mark = len(world.sent)
    world.post(payload)
    check(world, row, mark)


@scenario("status", (
    "``Complete``, the token a transaction's idx, or Khalti's answer naming another "
    "payment's transaction"
))  # fmt: skip
def _(world, row):
    # A paid payment's idx, posted as a token for another order.
    paid = world.widget(verified=True)
    world.khalti.fail_next("verify", "timeout", key=paid.idx)
    attack = {"token": paid.idx, "amount": 1000, "product_identity": world.order.reference}
    assert world.post(attack).status_code == 504
    mark = len(world.sent)
    world.post(attack)
    check(world, row, mark)
    # Khalti's status names a transaction another payment holds.
    world.next_order()
    taken = world.widget()
    Payment.objects.create(
        token="other", product_identity="OTHER", amount=1000, idx=taken.idx,
        status=Payment.Status.VERIFIED, verified_at=timezone.now(),
    )  # fmt: skip
    paid, payload = world.pending_widget()
    paid.verified = True
    world.khalti.answer_next(
        "status", json={"status": True, "state": "Complete", "detail": "x", "idx": taken.idx}
    )
    mark = len(world.sent)
    world.post(payload)
    check(world, row, mark)


@scenario("status", "``Confirmed``")
def _(world, row):
    assert row.becomes.startswith("what verify says")
    assert row.signal == "(verify's)"
    _paid, payload = world.pending_widget()
    world.khalti.answer_next("status", json={"status": True, "state": "Confirmed"})
    world.post(payload)
    assert world.payment().status == "verified"
    assert [c.endpoint for c in world.khalti.calls][-2:] == ["status", "verify"]


@scenario("status", "``Initiated``")
def _(world, row):
    status_answers(world, row, "Initiated")


@scenario("status", "``Error`` (not found for this token and amount)")
def _(world, row):
    status_answers(world, row, "Error")


@scenario("status", "``Failed``")
def _(world, row):
    status_answers(world, row, "Failed")


@scenario("status", "``Refunded``, the token no transaction's idx")
def _(world, row):
    status_answers(world, row, "Refunded")


@scenario("status", "``Partially refunded``")
def _(world, row):
    status_answers(world, row, "Partially refunded")


@scenario("status", "any other state")
def _(world, row):
    for state in ("Settled", "", "Completed!"):
        world.next_order()
        status_answers(world, row, state)


@scenario("status", '400 ``{"token": ["Invalid token."]}`` (no state)')
def _(world, row):
    _paid, payload = world.pending_widget()
    world.khalti.answer_next("status", status=400, json={"token": ["Invalid token."]})
    mark = len(world.sent)
    world.post(payload)
    check(world, row, mark)
    assert world.payment().claimed_at is None  # released: the next attempt asks at once


def lookup_answers(world: World, row: Row, setup: Callable[[World, Any, Payment], None]) -> None:
    epayment = world.epayment()
    payment = world.payment()
    setup(world, epayment, payment)
    mark = len(world.sent)
    world.come_back(epayment)
    check(world, row, mark, payment)


def paid_at_khalti(amount: int = 1000, transaction_id: str = "TX-1") -> Callable:
    def setup(world: World, epayment: Any, payment: Payment) -> None:
        epayment.status, epayment.transaction_id = "Completed", transaction_id
        epayment.amount = amount

    return setup


def link_dead(world: World, epayment: Any, payment: Payment) -> None:
    Payment.objects.filter(pk=payment.pk).update(expires_at=timezone.now() - timedelta(minutes=16))


@scenario("lookup", "``Completed``, the expected amount")
def _(world, row):
    lookup_answers(world, row, paid_at_khalti())


@scenario("lookup", "``Completed``, another amount")
def _(world, row):
    lookup_answers(world, row, paid_at_khalti(amount=1100))


@scenario("lookup", "``Completed``, another payment's transaction id")
def _(world, row):
    Payment.objects.create(
        token="other", product_identity="OTHER", amount=1000, idx="TX-TAKEN",
        status=Payment.Status.VERIFIED, verified_at=timezone.now(),
    )  # fmt: skip
    lookup_answers(world, row, paid_at_khalti(transaction_id="TX-TAKEN"))


def lookup_status(status: str) -> Callable:
    def setup(world: World, epayment: Any, payment: Payment) -> None:
        epayment.status = status
        if status != "Initiated":
            epayment.transaction_id = "TX-1"

    return setup


@scenario("lookup", "``Pending``")
def _(world, row):
    lookup_answers(world, row, lookup_status("Pending"))


@scenario("lookup", "``Initiated``, the link still good")
def _(world, row):
    lookup_answers(world, row, lookup_status("Initiated"))


@scenario("lookup", (
    "``Initiated``, asked because another payment (a widget payment, another buyer's "
    "start) came for the order: superseded"
))  # fmt: skip
def _(world, row):
    world.epayment()
    link = world.payment()
    mark = len(world.sent)
    paid = world.widget()
    assert world.post(paid.payload(world.order.reference)).status_code == 200
    # The widget payment's own payment_verified aside, what the link sent:
    widget = Payment.objects.get(token=paid.token)
    world.sent[mark:] = [s for s in world.sent[mark:] if s[2]["payment"].pk != widget.pk]
    check(world, row, mark, link)
    assert "Superseded" in Payment.objects.get(pk=link.pk).failure_reason


@scenario("lookup", "``Initiated``, 15 minutes past the link's expiry")
def _(world, row):
    lookup_answers(world, row, link_dead)


@scenario("lookup", "``Expired`` or ``User canceled``")
def _(world, row):
    for status in ("Expired", "User canceled"):
        world.next_order()
        lookup_answers(world, row, lookup_status(status))


@scenario("lookup", "``Refunded``")
def _(world, row):
    lookup_answers(world, row, lookup_status("Refunded"))


@scenario("lookup", "``Partially Refunded``")
def _(world, row):
    lookup_answers(world, row, lookup_status("Partially Refunded"))


def not_found(dead: bool) -> Callable:
    def setup(world: World, epayment: Any, payment: Payment) -> None:
        world.khalti.fail_next("lookup", "rejected", key=epayment.pidx)
        if dead:
            link_dead(world, epayment, payment)

    return setup


@scenario("lookup", "404 ``Not found.``, the link still good")
def _(world, row):
    lookup_answers(world, row, not_found(dead=False))


@scenario("lookup", "404 ``Not found.``, 15 minutes past the link's expiry")
def _(world, row):
    lookup_answers(world, row, not_found(dead=True))


def failed_epayment(world: World) -> tuple[Any, Payment]:
    epayment = world.epayment()
    world.client.get(world.khalti.cancel(epayment))
    payment = world.payment()
    assert payment.status == "failed"
    return epayment, payment


@scenario("re-check of a failed payment", (
    "paid (status ``Complete``, tied; lookup ``Completed``), the expected amount, the "
    "order not held by another payment"
))  # fmt: skip
def _(world, row):
    # An ePayment, looked up on its return page...
    epayment, payment = failed_epayment(world)
    paid_at_khalti()(world, epayment, payment)
    mark = len(world.sent)
    world.come_back(epayment)
    check(world, row, mark, payment)
    # ... and a widget payment Khalti refused, then completed, re-checked.
    world.next_order()
    paid = world.widget()
    world.khalti.fail_next("verify", "rejected", key=paid.token)
    world.khalti.fail_next("status", "rejected", key=paid.token)  # "Error", that once
    world.post(paid.payload(world.order.reference))
    widget = world.payment()
    assert widget.status == "failed"
    paid.verified = True
    mark = len(world.sent)
    services.recheck_failed(widget)
    check(world, row, mark, widget)


@scenario("re-check of a failed payment", "paid, and the order held by another payment")
def _(world, row):
    epayment, payment = failed_epayment(world)
    assert world.post(world.widget().payload(world.order.reference)).status_code == 200
    paid_at_khalti()(world, epayment, payment)
    mark = len(world.sent)
    services.recheck_failed(payment)
    check(world, row, mark, payment)


@scenario("re-check of a failed payment", "anything else")
def _(world, row):
    for status in ("User canceled", "Expired", "Pending", "Refunded", "Weird"):
        epayment, payment = failed_epayment(world)
        epayment.status = status
        mark = len(world.sent)
        services.recheck_failed(payment)
        check(world, row, mark, payment)
        world.next_order()


def verified_payment(world: World) -> Payment:
    paid = world.widget()
    assert world.post(paid.payload(world.order.reference)).status_code == 200
    return world.payment()


@scenario("refund", "200 ``Transaction refund successful.``")
def _(world, row):
    payment = verified_payment(world)
    mark = len(world.sent)
    services.refund_payment(payment, amount=400)
    assert payment.refunds.get().status == Refund.Status.SUCCEEDED
    payment.refresh_from_db()
    assert payment.status == "partially_refunded"
    assert "``partially_refunded``" in row.becomes
    mark = len(world.sent)
    services.refund_payment(payment)
    check(world, row, mark, payment)


@scenario("refund", "a readable 4xx refusal")
def _(world, row):
    assert row.becomes == "unchanged (the refund ``failed``)"
    assert row.signal == "(none)"
    payment = verified_payment(world)
    world.khalti.fail_next("refund", "rejected")
    mark = len(world.sent)
    with pytest.raises(KhaltiError):
        services.refund_payment(payment)
    payment.refresh_from_db()
    assert payment.status == "verified"
    assert payment.refunds.get().status == Refund.Status.FAILED
    assert world.signals_since(mark) == []


@scenario("refund", "a timeout, connection error, 5xx, or 200 without the success message")
def _(world, row):
    assert row.becomes == "unchanged (the refund ``pending``)"
    assert row.signal == "(none)"
    for _n, fault in enumerate(["timeout", "connection_error", "server_error", None]):
        payment = verified_payment(world)
        if fault:
            world.khalti.fail_next("refund", fault)
        else:
            world.khalti.answer_next("refund", json={"detail": "Hmm."})
        mark = len(world.sent)
        with pytest.raises(KhaltiError):
            services.refund_payment(payment)
        payment.refresh_from_db()
        assert payment.status == "verified"
        assert payment.refunds.get().status == Refund.Status.PENDING
        assert world.signals_since(mark) == []
        world.next_order()


def refund_recorded_failed(world: World, amount: int | None = None) -> tuple[Payment, Refund]:
    """A refund whose call timed out before Khalti did anything, which a re-check then
    recorded failed (Khalti showed the payment ``Completed``, nothing refunded)."""
    payment = verified_payment(world)
    world.khalti.fail_next("refund", "timeout")
    with pytest.raises(KhaltiError):
        services.refund_payment(payment, amount=amount)
    refund = payment.refunds.get()
    Refund.objects.filter(pk=refund.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.reconcile_refund(Refund.objects.get(pk=refund.pk)).status == "failed"
    return payment, Refund.objects.get(pk=refund.pk)


@scenario("re-check of a refund recorded failed", (
    "``Refunded`` for all that remained; or ``Partially refunded``, the payment's only "
    "refund, nothing refunded before"
))  # fmt: skip
def _(world, row):
    for amount, state in [(400, "Partially refunded"), (None, "Refunded")]:
        world.next_order()
        payment, refund = refund_recorded_failed(world, amount)
        world.khalti.set_state(payment.token, state)  # Khalti applies it late
        mark = len(world.sent)
        assert services.recheck_failed_refund(refund).status == Refund.Status.SUCCEEDED
        payment.refresh_from_db()
        assert payment.refunded_amount == refund.amount
        assert f"``{payment.status}``" in row.becomes
        assert world.signals_since(mark) == [row.signal_name]
    check(world, row, mark, payment)  # the refund of all that remained: ``refunded``


@scenario("re-check of a refund recorded failed", "anything else")
def _(world, row):
    assert row.becomes == "unchanged (the refund ``failed``)"
    for amount, state in [(None, "Completed"), (1000, "Partially refunded"), (400, "Refunded")]:
        payment, refund = refund_recorded_failed(world, amount)
        world.khalti.set_state(payment.token, state)
        mark = len(world.sent)
        Refund.objects.filter(pk=refund.pk).update(rechecked_at=None)
        assert services.recheck_failed_refund(refund).status == Refund.Status.FAILED
        payment.refresh_from_db()
        assert (payment.status, payment.refunded_amount) == ("verified", 0)
        assert world.signals_since(mark) == []
        world.next_order()


# --- the table and the scenarios match --------------------------------------------------


def test_the_table_is_found_and_has_every_endpoint():
    assert {row.endpoint for row in ROWS} == {
        "verify", "status", "lookup", "re-check of a failed payment", "refund",
        "re-check of a refund recorded failed",
    }  # fmt: skip


def test_every_row_has_a_scenario_and_every_scenario_a_row():
    keys = {(row.endpoint, row.answer) for row in ROWS}
    assert keys - set(SCENARIOS) == set(), "rows without a scenario"
    assert set(SCENARIOS) - keys == set(), "scenarios without a row"
    assert len(keys) == len(ROWS), "two rows say the same"


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.endpoint}: {row.answer}"[:70])
def test_each_row_is_what_the_app_does(world, row, status_changes):
    SCENARIOS[(row.endpoint, row.answer)](world, row)
    # Each change the row made is an arrow of the page's state diagram.
    assert set(status_changes) - drawn_edges() == set(), "changes the diagram does not draw"
