"""Money that moved for a payment keeps its order (issue 25, 3).

First the reproduction, from the shop's side: a client posts only token and amount,
Khalti completes the verification but its answer is lost, and status says
``Complete`` for the token and amount while Khalti knows no transaction whose idx is
the token. The order is paid, once; the buyer's next token is refused and never
verified at Khalti; the shop's receivers heard ``payment_verified`` once.

Then the table "When an order is let go" of docs/explanation/states.rst: each row's
situation is played through the API with the shipped kit as Khalti, then a new
payment is offered for the same order. A row that lets the order go takes it; a row
that keeps it (or whose order another payment paid) refuses it, and Khalti's verify
never sees the new token. A row without a scenario, or a scenario without a row,
fails.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_khalti import services
from django_khalti.models import Payment
from django_khalti.orders import KhaltiOrder
from shop.models import Order, OrderEvent

from .conftest import table_cells

pytestmark = pytest.mark.django_db

VERIFY_URL = reverse("django_khalti:verify")
Status = Payment.Status


def every_order(request, product_identity):
    """A resolver that names paid orders too: the app's own claim must refuse them."""
    order = Order.objects.filter(reference=product_identity).first()
    return KhaltiOrder(order.reference, order.total) if order else None


def resolving_every_order():
    path = f"{__name__}.every_order"
    return override_settings(KHALTI={**settings.KHALTI, "AMOUNT_RESOLVER": path})


def post(client, payload):
    return client.post(VERIFY_URL, payload, content_type="application/json")


def minimal(paid, reference):
    """The verification doc's minimal body: token and amount (and the order)."""
    return {"token": paid.token, "amount": paid.amount, "product_identity": reference}


# --- the reproduction --------------------------------------------------------------------


@pytest.mark.parametrize("resolver", ["the shop's", "naming paid orders too"])
def test_a_lost_verify_answer_pays_the_order_once_and_the_next_token_is_refused(
    client, khalti, signals, django_capture_on_commit_callbacks, resolver
):
    order = Order.objects.create(reference="ORD-O", total=1000)
    paid = khalti.add_payment(amount=1000, outcome="timeout_after_processing")
    assert post(client, minimal(paid, "ORD-O")).status_code == 504  # Khalti did it; lost
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, minimal(paid, "ORD-O"))
    assert response.status_code == 200, response.json()
    # Asked, never verified again: status Complete; the token is no transaction's idx.
    assert [call.endpoint for call in khalti.calls] == ["verify", "status", "transaction"]
    payment = Payment.objects.get()
    assert (payment.status, payment.idx) == (Status.VERIFIED, None)  # its idx unknown
    assert payment.order_claim is not None
    # The shop heard it once, and marked the order paid.
    assert [(name, kw["payment"].status) for name, _, kw in signals] == [("verified", "verified")]
    order.refresh_from_db()
    assert order.paid
    assert list(OrderEvent.objects.values_list("kind", flat=True)) == ["paid"]

    again = khalti.add_payment(amount=1000)
    if resolver == "the shop's":
        refused = post(client, minimal(again, "ORD-O"))
        assert refused.json().get("code") == "unknown_order"  # the shop hides a paid order
    else:
        with resolving_every_order():
            refused = post(client, minimal(again, "ORD-O"))
        assert refused.json().get("code") == "already_paid"  # the app's own claim
    assert not khalti.payments[again.token].verified  # never charged
    assert [name for name, _, _ in signals] == ["verified"]
    assert OrderEvent.objects.count() == 1


# --- the table: when an order is let go ----------------------------------------------------


@dataclass(frozen=True)
class Row:
    change: str
    reason: str
    order: str
    why: str

    @property
    def to(self) -> str:
        found = re.match(r"[a-z_]+ → ([a-z_]+)", self.change)
        assert found, self
        return found.group(1)


ROWS = [Row(*cells) for cells in table_cells("When an order is let go", "Change")]


@dataclass
class World:
    client: Any
    khalti: Any
    order: Order

    def post(self, payload: dict) -> Any:
        return post(self.client, payload)

    def widget(self, **kwargs: Any) -> Any:
        return self.khalti.add_payment(amount=1000, **kwargs)

    def payload(self, paid: Any) -> dict:
        return paid.payload(self.order.reference)

    def pending_widget(self, outcome: str = "timeout_after_processing") -> tuple[Any, dict]:
        """A widget payment whose first verify's answer was lost."""
        paid = self.widget(outcome=outcome)
        payload = self.payload(paid)
        assert self.post(payload).status_code == 504
        return paid, payload

    def epayment(self) -> tuple[Any, Payment]:
        url = reverse("django_khalti:epayment-start", args=[self.order.reference])
        assert self.client.post(url).status_code == 302
        link = self.khalti.last_epayment
        return link, Payment.objects.get(pidx=link.pidx)

    def failed_epayment(self) -> tuple[Any, Payment]:
        link, payment = self.epayment()
        self.client.get(self.khalti.cancel(link))
        assert fresh(payment).status == Status.FAILED
        return link, payment

    def come_back(self, link: Any) -> None:
        self.client.get(self.khalti.return_url(link))

    def offer(self) -> tuple[bool, Any]:
        """A new widget payment for the order: whether it was taken, and Khalti's record."""
        new = self.widget()
        response = self.post(self.payload(new))
        taken = response.status_code == 200
        if not taken:
            assert response.json()["code"] in ("already_paid", "in_progress"), response.json()
        return taken, self.khalti.payments[new.token]


def fresh(payment: Payment) -> Payment:
    return Payment.objects.get(pk=payment.pk)


def another_payments(idx: str) -> Payment:
    return Payment.objects.create(
        token=f"tok-{idx}", product_identity=f"OTHER-{idx}", amount=1000, idx=idx,
        status=Status.VERIFIED, verified_at=timezone.now(),
    )  # fmt: skip


Scenario = Callable[[World], Payment]
SCENARIOS: dict[tuple[str, str], Scenario] = {}


def scenario(change: str, reason: str) -> Callable[[Scenario], Scenario]:
    def register(function: Scenario) -> Scenario:
        SCENARIOS[(change, reason)] = function
        return function

    return register


@scenario("pending → failed", "status ``Error`` or ``Failed`` for the token and amount")
def _(world):
    _paid, payload = world.pending_widget(outcome="timeout")
    world.khalti.answer_next("status", json={"status": False, "state": "Failed", "detail": "x"})
    world.post(payload)
    return Payment.objects.get()


@scenario("pending → failed", (
    "an ePayment link Khalti says expired or cancelled, or dead (not paid 15 minutes past "
    "its expiry)"
))  # fmt: skip
def _(world):
    return world.failed_epayment()[1]


@scenario("pending → failed (no signal)", (
    "an ePayment Khalti refused to start, or could not be reached to start"
))  # fmt: skip
def _(world):
    world.khalti.fail_next("initiate", "rejected")
    world.client.post(reverse("django_khalti:epayment-start", args=[world.order.reference]))
    return Payment.objects.get()


@scenario("pending → failed (no signal)", (
    "an ePayment link superseded: another payment came for the order, and lookup says the "
    "link is only started"
))  # fmt: skip
def _(world):
    return world.epayment()[1]  # pending: the offer supersedes it


@scenario("pending → failed (no signal)", (
    "a widget payment stored waiting for its order, when another payment paid the order"
))  # fmt: skip
def _(world):
    first, first_payload = world.pending_widget()
    world.khalti.fail_next("status", "timeout", key=first.token)  # it cannot be settled yet
    waiting = world.widget()
    assert world.post(world.payload(waiting)).json()["code"] == "in_progress"
    assert world.post(first_payload).status_code == 200
    assert world.post(world.payload(waiting)).status_code == 400
    return Payment.objects.get(token=waiting.token)


@scenario("pending → failed", (
    "status ``Refunded`` or ``Partially refunded`` for a \"token\" that Khalti knows as a "
    "transaction's idx"
))  # fmt: skip
def _(world):
    someones = world.widget(verified=True)
    world.khalti.set_state(someones.token, "Refunded")
    world.post({"token": someones.idx, "amount": 1000, "product_identity": world.order.reference})
    return Payment.objects.get(token=someones.idx)


@scenario("pending → failed (no signal)", (
    "a \"token\" that another pending payment's page reported as its idx, and that "
    "Khalti's records know as a transaction's idx"
))  # fmt: skip
def _(world):
    someones = world.widget(verified=True)  # paid, its idx in Khalti's records
    Order.objects.create(reference="ORD-P", total=1000)
    pending = world.widget(outcome="timeout")  # its page reports someone's idx as its own
    assert world.post({**pending.payload("ORD-P"), "idx": someones.idx}).status_code == 504
    response = world.post(
        {"token": someones.idx, "amount": 1000, "product_identity": world.order.reference}
    )
    assert response.json()["code"] == "token_used", response.json()
    return Payment.objects.get(token=someones.idx)


@scenario("pending → refunded", (
    "Khalti shows all of it refunded before it was verified (verify's record ``refunded``, "
    "status ``Refunded``, lookup ``Refunded``)"
))  # fmt: skip
def _(world):
    paid, payload = world.pending_widget()
    world.khalti.set_state(paid.token, "Refunded")
    world.post(payload)
    return Payment.objects.get()


@scenario("pending → needs_review", (
    "Khalti's answer names another payment's transaction (verify's record, status, lookup)"
))  # fmt: skip
def _(world):
    another_payments("IDX-TAKEN")
    paid = world.widget()
    world.khalti.answer_next("verify", json={**paid.record(), "idx": "IDX-TAKEN"})
    world.post(world.payload(paid))
    return Payment.objects.get(token=paid.token)


@scenario("pending → needs_review", (
    "the token is a transaction's idx (verify's record under the token's name; status "
    "``Complete`` and Khalti's record of the token under its own name)"
))  # fmt: skip
def _(world):
    someones = world.widget(verified=True)
    world.khalti.fail_next("verify", "timeout", key=someones.idx)
    attack = {"token": someones.idx, "amount": 1000, "product_identity": world.order.reference}
    assert world.post(attack).status_code == 504
    world.post(attack)
    return Payment.objects.get(token=someones.idx)


@scenario("pending → verified", (
    "status ``Complete`` for the token and amount, the token no transaction's idx, no "
    "transaction named whose record matches: verified with its ``idx`` unknown"
))  # fmt: skip
def _(world):
    paid = world.widget(outcome="timeout_after_processing")
    body = minimal(paid, world.order.reference)
    assert world.post(body).status_code == 504
    assert world.post(body).status_code == 200
    payment = Payment.objects.get()
    assert payment.idx is None
    return payment


@scenario("pending → needs_review", "paid for another amount (verify's record, lookup)")
def _(world):
    paid = world.widget(outcome="wrong_amount")
    world.post(world.payload(paid))
    return Payment.objects.get()


@scenario("pending → needs_review", "partially refunded before it was verified (status, lookup)")
def _(world):
    paid, payload = world.pending_widget()
    world.khalti.set_state(paid.token, "Partially refunded")
    world.post(payload)
    return Payment.objects.get()


@scenario("failed → needs_review", (
    "a re-check finds a failed payment paid after all, for another amount or partially "
    "refunded, while the order is free"
))  # fmt: skip
def _(world):
    link, payment = world.failed_epayment()
    link.status, link.amount, link.transaction_id = "Completed", 1100, "TX-LATE"
    world.come_back(link)
    return payment


@scenario("failed → needs_review", (
    "a re-check finds a failed payment paid after all, when another payment paid the "
    "order meanwhile"
))  # fmt: skip
def _(world):
    link, payment = world.failed_epayment()
    assert world.post(world.payload(world.widget())).status_code == 200
    link.status, link.transaction_id = "Completed", "TX-LATE"
    world.come_back(link)
    return payment


@scenario("needs_review → refunded", (
    "a person refunds a payment that needs review and was never verified"
))  # fmt: skip
def _(world):
    paid = world.widget(outcome="wrong_amount")
    world.post(world.payload(paid))
    payment = Payment.objects.get()
    assert (payment.status, payment.order_claim is not None) == (Status.NEEDS_REVIEW, True)
    paid.verified = True  # Khalti verified it (for Rs 11): its money is the merchant's
    services.refund_payment(payment)
    return payment


@scenario("verified → refunded", "a refund of all of a verified payment, through the app")
def _(world):
    paid = world.widget()
    assert world.post(world.payload(paid)).status_code == 200
    payment = Payment.objects.get()
    services.refund_payment(payment)
    return payment


def walk_the_ledger(world, change) -> Payment:
    """A verified payment, ``change`` made to Khalti's books, and the ledger walk run."""
    paid = world.widget()
    assert world.post(world.payload(paid)).status_code == 200
    payment = Payment.objects.get()
    Payment.objects.filter(pk=payment.pk).update(
        verified_at=payment.verified_at - timedelta(hours=1)
    )
    change(paid)
    call_command("khalti_reconcile", "--ledger", "--since", "1d", stdout=io.StringIO())
    return payment


@scenario(
    "verified → refunded",
    "all of a verified payment refunded in Khalti's dashboard, found by the ledger walk",
)
def _(world):
    return walk_the_ledger(world, lambda paid: world.khalti.refund_in_dashboard(paid.token))


@scenario(
    "verified → needs_review",
    "the ledger walk finds Khalti's record of another amount or state, or none",
)
def _(world):
    return walk_the_ledger(world, lambda paid: world.khalti.set_amount(paid.token, 1500))


def test_the_table_is_found_and_says_kept_or_let_go():
    assert len(ROWS) >= 10
    assert {row.order for row in ROWS} == {"kept", "let go", "paid by another"}


def test_every_row_has_a_scenario_and_every_scenario_a_row():
    keys = {(row.change, row.reason) for row in ROWS}
    assert keys - set(SCENARIOS) == set(), "rows without a scenario"
    assert set(SCENARIOS) - keys == set(), "scenarios without a row"
    assert len(keys) == len(ROWS), "two rows say the same"


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"{row.change}: {row.reason}"[:70])
def test_each_row_keeps_or_lets_go_of_the_order_as_it_says(client, khalti, row):
    world = World(client, khalti, Order.objects.create(reference="ORD-K", total=1000))
    with resolving_every_order():
        payment = SCENARIOS[(row.change, row.reason)](world)
        taken, offered = world.offer()
    payment = fresh(payment)
    assert payment.status == row.to, (row, payment.failure_reason)
    assert (payment.order_claim is not None) == (row.order == "kept"), row
    assert taken == (row.order == "let go"), row
    assert offered.verified == taken, "a refused payment reached Khalti's verify"
