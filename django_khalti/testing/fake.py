"""A fake Khalti on ``responses``: Khalti's endpoints, its answers and its state.

Everything here plays Khalti's part, as described in Khalti's documentation;
none of it reuses dj-khalti's client, so that a test with the fake checks the
app against Khalti and not against itself.

Quick reference (``khalti`` is a started :class:`KhaltiFake`)::

    payment = khalti.add_payment(amount=1000)         # a widget payment the buyer made
    client.post(reverse("django_khalti:verify"), payment.payload("ORD-1"),
                content_type="application/json")
    khalti.verify_calls == [(payment.token, 1000)]

    epayment = khalti.last_epayment                   # after the app started an ePayment
    client.get(khalti.pay(epayment))                  # the buyer pays and comes back
    client.get(khalti.cancel(epayment))               # ... or cancels and comes back

    khalti.add_payment(token="t", amount=1000, outcome="timeout")  # its first verify times out
    khalti.fail_next("refund", "server_error")        # the next refund gets an HTML 500
    khalti.fail_next("any", "connection_error", times=None)        # Khalti is down
    khalti.answer_next("status", json={...}, delay=0.3)   # a slow answer (others go on meanwhile)
    khalti.on_next("verify", lambda request: ...)          # compute the answer per request
    choice = khalti.answer_next("lookup", json={...})      # each returns a KhaltiChoice:
    assert len(choice.calls) == 1                          # ... the calls it answered

    khalti.refund_in_dashboard(payment.idx, 300)      # Khalti's books, outside the app:
    khalti.add_foreign(5000)                          # ... see books.py

Outcomes (:data:`OUTCOMES`), for :meth:`KhaltiFake.fail_next` and the
``outcome`` of :meth:`~KhaltiFake.add_payment` / :meth:`~KhaltiFake.add_epayment`:

``"rejected"``
    Khalti refuses: verify HTTP 400 ``{"token": ["Invalid token."]}``; status
    ``{"state": "Error", "detail": "Transaction not found"}``; lookup and
    transaction HTTP 404 ``{"detail": "Not found."}``; refund HTTP 400
    ``{"detail": "Refund period expired."}``; initiate HTTP 400 with a
    ``validation_error``; the transaction list HTTP 404 ``{"detail": "Invalid
    page."}``. Nothing changes at Khalti.
``"wrong_amount"``
    Khalti answers for another amount (Rs 1 more) than the one asked: verify
    HTTP 200 with a completed record for that amount, lookup ``Completed``
    with that ``total_amount``, status ``Error`` (Khalti's answer to a wrong
    amount), transaction a record for that amount. Nothing changes at Khalti.
    Not an answer of refund or initiate (with ``"any"``, they answer as
    usual). A payment registered for another amount than the app verifies
    needs no outcome: Khalti refuses it, HTTP 400 ``Invalid token.``
``"timeout"``
    ``requests.exceptions.ReadTimeout`` before Khalti did anything.
``"timeout_after_processing"``
    Khalti did the work (verified, refunded, started the ePayment), then the
    answer was lost: ``ReadTimeout``. The status and lookup endpoints tell
    what happened, as they would at Khalti.
``"connection_error"``
    ``requests.exceptions.ConnectionError``: Khalti never saw the request.
``"server_error"``
    HTTP 500 with an HTML page. Nothing changes.
``"not_json"``
    HTTP 200 with an HTML page. Nothing changes.
``"unauthorized"``
    HTTP 401 ``{"detail": "Invalid token."}``, Khalti's answer to a wrong key.

Other answers Khalti gives depend on the payment's state, not on an outcome:
a pending, expired, cancelled or refunded payment is registered in that state
(``add_epayment(status="Pending")``, ``add_payment(state="Refunded")``) or
moved there (:meth:`~KhaltiFake.pay`, :meth:`~KhaltiFake.cancel`,
:meth:`~KhaltiFake.expire`, :meth:`~KhaltiFake.set_state`, a refund through
the app). Any other answer: :meth:`~KhaltiFake.answer_next`, or a callback that
computes it from the request: :meth:`~KhaltiFake.on_next`. All three choices
take ``delay=seconds`` (a slow Khalti) and return a :class:`KhaltiChoice`
whose ``calls`` are the calls it answered.

:class:`KhaltiFake` is here; its parts are beside it, and every name of theirs
is importable from here too: ``records`` (what Khalti holds: payments and
ePayments), ``calls`` (the calls recorded and the answers chosen ahead),
``answering`` (a request in, an answer out), ``endpoints`` (Khalti's answer
by its state, per endpoint) and ``books`` (Khalti's books changed outside the app).
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import responses
from django.utils import timezone as django_timezone

from ..conf import khalti_settings
from ..rules.shapes import FUNDED_BY, LINK_SECONDS, pay_refusal
from ..rules.shapes import fee as khalti_fee
from .answering import _Answering
from .books import _Books

# The parts' public names, importable from here as before the kit was split
# (``X as X``: re-exported, for type checkers too).
from .calls import ENDPOINTS as ENDPOINTS
from .calls import OLDER_PATHS as OLDER_PATHS
from .calls import OUTCOMES as OUTCOMES
from .calls import CallbackResult as CallbackResult
from .calls import KhaltiCall as KhaltiCall
from .calls import KhaltiChoice as KhaltiChoice
from .calls import KhaltiRefundCall as KhaltiRefundCall
from .calls import KhaltiRequest as KhaltiRequest
from .calls import KhaltiStatusCall as KhaltiStatusCall
from .calls import KhaltiVerifyCall as KhaltiVerifyCall
from .calls import _CallRecords, _Choosing
from .records import EPAYMENT_400 as EPAYMENT_400
from .records import EPAYMENT_STATUSES as EPAYMENT_STATUSES
from .records import MIN_AMOUNT as MIN_AMOUNT
from .records import NPT as NPT
from .records import WIDGET_STATES as WIDGET_STATES
from .records import KhaltiFakeEpayment as KhaltiFakeEpayment
from .records import KhaltiFakeForeign as KhaltiFakeForeign
from .records import KhaltiFakePayment as KhaltiFakePayment
from .records import _canonical, _now, _payable, _refunded
from .records import khalti_id as khalti_id

if TYPE_CHECKING:  # pragma: no cover
    from .deliveries import KhaltiSignalSender


class KhaltiFake(_Choosing, _CallRecords, _Books, _Answering):
    """Khalti's merchant API, faked at the transport with ``responses``.

    ``base_url``: where the fake answers. By default ``KHALTI["BASE_URL"]``
    *as it is when each request is made*, so ``override_settings`` and
    pytest-django's ``settings`` work whenever they are applied.

    ``secret_key``: the key Khalti knows. By default ``KHALTI["SECRET_KEY"]``
    as it is when each request is made (like ``base_url``). A request with another key (or none) gets HTTP 401,
    as from Khalti, before any outcome chosen with :meth:`fail_next` or
    :meth:`answer_next` (except ``timeout`` and ``connection_error``, which
    happen before Khalti reads the request). Set :attr:`secret_key` to play a
    shop with a wrong key.

    Use it as a context manager, or :meth:`start` and :meth:`stop`. While it
    runs, any request to a URL that is not a Khalti endpoint at ``base_url``
    raises ``requests.ConnectionError`` (``responses``' way), so nothing
    reaches the network. Other services your test mocks can be added to
    :attr:`mock`, the underlying ``responses.RequestsMock``.
    """

    #: How long an ePayment link is good for (Khalti's sandbox: 30 minutes).
    EPAYMENT_LINK_SECONDS = LINK_SECONDS
    #: Where Khalti's hosted page for an ePayment is (never fetched by the app).
    PAYMENT_URL = "https://test-pay.khalti.com/?pidx={pidx}"

    def __init__(self, *, base_url: str | None = None, secret_key: str | None = None) -> None:
        self._base_url = self._normalise(base_url) if base_url else None
        self.secret_key: str | None = secret_key
        #: Widget payments by token.
        self.payments: dict[str, KhaltiFakePayment] = {}
        #: ePayments by pidx, in the order they were made.
        self.epayments: dict[str, KhaltiFakeEpayment] = {}
        self.foreign: dict[str, KhaltiFakeForeign] = {}
        #: Every request made to the fake Khalti, in order.
        self.calls: list[KhaltiCall] = []
        self._overrides: list[KhaltiChoice] = []
        self._lock = threading.RLock()
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        for name, (method, path) in [*ENDPOINTS.items(), *OLDER_PATHS.items()]:
            self.mock.add_callback(
                method,
                re.compile(r"https?://.*"),
                callback=self._callback(name, path),
                match=[self._matcher(path)],
                content_type=None,
            )
        self._started = False

    # --- running -------------------------------------------------------------------------

    def start(self) -> KhaltiFake:
        """Start answering."""
        if self._started:
            raise RuntimeError("This KhaltiFake is already started.")
        self.mock.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop answering: ``requests`` goes back to the network."""
        if self._started:
            self.mock.stop(allow_assert=False)
            self._started = False

    def __enter__(self) -> KhaltiFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Where the fake answers right now."""
        return self._base_url or self._normalise(khalti_settings.BASE_URL)

    @staticmethod
    def _normalise(url: object) -> str:
        if not isinstance(url, str):
            return ""
        return url if url.endswith("/") else url + "/"

    # --- Khalti's state ------------------------------------------------------------------

    def add_payment(
        self,
        *,
        amount: int,
        token: str | None = None,
        state: str = "Completed",
        idx: str | None = None,
        verified: bool = False,
        mobile: str = "98XXXXXXX9",
        fee_amount: int | None = None,
        refunded_amount: int | None = None,
        outcome: str | None = None,
        funded_by: str = "wallet",
    ) -> KhaltiFakePayment:
        """Register a widget payment: the buyer paid ``amount`` paisa in Khalti's widget.

        ``state`` is Khalti's (:data:`WIDGET_STATES`): ``Completed`` (the buyer
        confirmed: verify with the same amount answers the full transaction
        record and Khalti's status moves from Confirmed to Complete),
        ``Initiated`` (not confirmed yet) or ``Failed`` (verify refuses both),
        ``Refunded`` or ``Partially refunded`` (verified and refunded already).
        ``verified=True``: the merchant verified it already. Verify refuses,
        with HTTP 400 ``{"token": ["Invalid token."]}``, an unknown token, a
        different amount, and a token verified before (Khalti's answer to a
        repeat is undocumented; refusing shows up code that re-verifies).

        ``outcome`` (:data:`OUTCOMES`) is the answer to the *first* verify call
        for this token: ``add_payment(amount=1000, outcome="timeout")``;
        ``"rejected"`` also makes every status call for it answer ``Error``, as
        Khalti does for a payment it refuses.
        ``amount`` below Khalti's minimum, :data:`MIN_AMOUNT` (Rs 10), is refused
        with ``ValueError``: Khalti's widget takes no such payment, so no token for
        it can exist.
        ``funded_by="bank"``: the buyer paid from a bank (e-banking, mobile
        banking) rather than a Khalti wallet: Khalti then refunds it only to a
        ``mobile`` (a refund without one gets HTTP 400), and takes no such payment
        below Rs 100 (``ValueError``).
        ``token`` and ``idx`` are made up when not given. Returns the payment;
        its :meth:`~KhaltiFakePayment.payload` is what the widget's page posts.
        """
        state = _canonical(state, WIDGET_STATES, "widget state")
        funded_by = _canonical(funded_by, FUNDED_BY, "funded_by")
        amount = _payable(amount, funded_by)
        payment = KhaltiFakePayment(
            token=token or khalti_id(),
            amount=amount,
            state=state,
            idx=idx or khalti_id(),
            verified=verified or state in ("Refunded", "Partially refunded"),
            mobile=mobile,
            fee_amount=khalti_fee(amount) if fee_amount is None else fee_amount,
            refunded_amount=_refunded(state, amount, refunded_amount),
            funded_by=funded_by,
        )
        with self._lock:
            self.payments[payment.token] = payment
        if outcome is not None:
            self.fail_next("verify", outcome, key=payment.token)
        if outcome == "rejected":
            # Khalti refuses this payment: its status says so too ("Error": not found).
            self.fail_next("status", "rejected", key=payment.token, times=None)
        return payment

    def add_epayment(
        self,
        *,
        amount: int,
        pidx: str | None = None,
        status: str = "Initiated",
        purchase_order_id: str = "",
        purchase_order_name: str = "",
        return_url: str = "",
        transaction_id: str | None = None,
        fee: int | None = None,
        mobile: str = "98XXXXX001",
        refunded_amount: int | None = None,
        expires_at: datetime | None = None,
        outcome: str | None = None,
        funded_by: str = "wallet",
    ) -> KhaltiFakeEpayment:
        """Register an ePayment, as if the app had initiated it.

        ``status`` is what lookup says (:data:`EPAYMENT_STATUSES`, any
        capitalisation): ``Initiated``, ``Pending``, ``Completed``,
        ``Expired`` and ``User canceled`` (both answered with HTTP 400, like
        Khalti), ``Refunded``, ``Partially Refunded``. A paid one gets a
        ``transaction_id`` unless given. ``outcome`` (:data:`OUTCOMES`) is the
        answer to the *first* lookup of this pidx. An ``amount`` below
        :data:`MIN_AMOUNT` is refused (``ValueError``), as initiate refuses it. When the app initiates an
        ePayment, the fake registers it the same way: see :attr:`last_epayment`.
        ``funded_by``: where a paid one's money came from (see :meth:`add_payment`).
        ``fee``: Khalti's fee once paid (by default Khalti's 3 %); lookup says 0
        before the buyer pays.
        """
        status = _canonical(status, EPAYMENT_STATUSES, "ePayment status")
        funded_by = _canonical(funded_by, FUNDED_BY, "funded_by")
        amount = _payable(amount, funded_by)
        paid = status in ("Pending", "Completed", "Refunded", "Partially Refunded")
        epayment = KhaltiFakeEpayment(
            pidx=pidx or khalti_id(),
            amount=amount,
            status=status,
            purchase_order_id=purchase_order_id,
            purchase_order_name=purchase_order_name,
            return_url=return_url,
            transaction_id=transaction_id or (khalti_id() if paid else None),
            fee=khalti_fee(amount) if fee is None else fee,
            mobile=mobile if paid else "",
            refunded_amount=_refunded(status, amount, refunded_amount),
            expires_at=expires_at or _now() + timedelta(seconds=self.EPAYMENT_LINK_SECONDS),
            funded_by=funded_by,
        )
        epayment.payment_url = self.PAYMENT_URL.format(pidx=epayment.pidx)
        with self._lock:
            self.epayments[epayment.pidx] = epayment
        if outcome is not None:
            self.fail_next("lookup", outcome, key=epayment.pidx)
        return epayment

    @property
    def last_epayment(self) -> KhaltiFakeEpayment:
        """The ePayment initiated (or added) last."""
        if not self.epayments:
            raise LookupError("No ePayment was initiated.")
        return list(self.epayments.values())[-1]

    def epayment(self, pidx: str | KhaltiFakeEpayment) -> KhaltiFakeEpayment:
        """The ePayment of this pidx."""
        if isinstance(pidx, KhaltiFakeEpayment):
            return pidx
        try:
            return self.epayments[pidx]
        except KeyError:
            raise LookupError(f"No ePayment {pidx!r} at the fake Khalti.") from None

    def pay(
        self,
        pidx: str | KhaltiFakeEpayment,
        *,
        status: str = "Completed",
        mobile: str = "98XXXXX001",
        funded_by: str = "wallet",
    ) -> str:
        """The buyer pays an ePayment on Khalti's page. Returns the URL Khalti then
        sends the browser to (``return_url`` and its query string), ready for
        ``client.get(...)``. ``status="Pending"``: Khalti holds the payment
        (call ``pay`` again to complete it). ``funded_by="bank"``: from a bank
        (see :meth:`add_payment`).

        Raises ``ValueError``, as Khalti's page refuses the buyer, for an ePayment
        paid, cancelled or refunded already, and for one whose link has expired
        (``expires_at`` passed, by ``django.utils.timezone.now``): a link a shop
        stored and sends again later cannot be paid. An ePayment the app never
        started is refused too (``ValueError``): see :meth:`pay_wrong_amount`.
        """
        self._refuse_unstarted(pidx, "paid")
        with self._lock:
            epayment = self._payable_epayment(pidx)
            status = _canonical(status, ("Completed", "Pending"), "payment status")
            funded_by = _canonical(funded_by, FUNDED_BY, "funded_by")
            _payable(epayment.amount, funded_by)
            epayment.status = status
            epayment.funded_by = funded_by
            epayment.transaction_id = epayment.transaction_id or khalti_id()
            epayment.mobile = mobile
            return epayment.return_url_with_params()

    def cancel(self, pidx: str | KhaltiFakeEpayment) -> str:
        """The buyer cancels on Khalti's page: lookup now says ``User canceled``.
        Returns the URL Khalti sends the browser back to. Refused (``ValueError``)
        as :meth:`pay` is, an ePayment the app never started included.
        """
        self._refuse_unstarted(pidx, "canceled")
        with self._lock:
            epayment = self._payable_epayment(pidx)
            epayment.status = "User canceled"
            return epayment.return_url_with_params()

    def _payable_epayment(self, pidx: str | KhaltiFakeEpayment) -> KhaltiFakeEpayment:
        """The ePayment of ``pidx``, if the buyer can still pay or cancel it on
        Khalti's page; ``ValueError`` saying why not otherwise (an expired link
        is marked Expired first, as lookup would find it).
        """
        epayment = self.epayment(pidx)
        refusal = pay_refusal(epayment.held(), django_timezone.now())
        if refusal is None:
            return epayment
        if refusal.rule == "pay.expired":
            epayment.status = "Expired"
        raise ValueError(refusal.message)

    def expire(self, pidx: str | KhaltiFakeEpayment) -> None:
        """The ePayment's link runs out unpaid: lookup now says ``Expired``.

        (An ``Initiated`` ePayment also expires by itself once ``expires_at``
        has passed, as the clock of ``django.utils.timezone.now`` tells.)
        """
        with self._lock:
            epayment = self.epayment(pidx)
            if epayment.status != "Initiated":
                raise ValueError(
                    f"ePayment {epayment.pidx} is {epayment.status}: it cannot expire."
                )
            epayment.status = "Expired"

    def return_url(self, pidx: str | KhaltiFakeEpayment) -> str:
        """Where Khalti sends the buyer back for this ePayment as it stands."""
        return self.epayment(pidx).return_url_with_params()

    def set_state(self, key: str, state: str) -> None:
        """Move a payment (by token or idx) or an ePayment (by pidx) to ``state``,
        as things happening at Khalti outside the app would.
        """
        with self._lock:
            if key in self.epayments:
                self.epayments[key].status = _canonical(state, EPAYMENT_STATUSES, "ePayment status")
                return
            payment = self._payment(key)
            if payment is None:
                raise LookupError(f"No payment {key!r} at the fake Khalti.")
            payment.state = _canonical(state, WIDGET_STATES, "widget state")
            if payment.state in ("Refunded", "Partially refunded"):
                payment.verified = True

    # --- a test's checks on its own steps ------------------------------------------------

    #: Under the pytest plugin's ``khalti`` fixture, what sends dj-khalti's signals
    #: when a request through the test client ends
    #: (:class:`~django_khalti.testing.deliveries.KhaltiSignalSender`); None
    #: outside it. ``khalti.signals.enabled = False``: nothing is sent, and no
    #: unsent signal fails the test (a test playing a worker that died between
    #: the commit and the send).
    signals: KhaltiSignalSender | None = None

    def pay_wrong_amount(
        self, pidx: str | KhaltiFakeEpayment, *, amount: int, status: str = "Completed"
    ) -> str:
        """The buyer pays an ePayment the app started, and Khalti's records say
        ``amount`` paisa (not what the app asked for): lookup's ``total_amount``,
        the return URL's ``amount`` and the transaction. Returns the URL Khalti
        sends the browser back to, as :meth:`pay` does. ``amount`` must differ
        from the ePayment's, and be one Khalti takes (at least :data:`MIN_AMOUNT`).
        """
        epayment = self.epayment(pidx)
        self._refuse_unstarted(epayment, "paid")
        self._payable_epayment(epayment)  # not an expired or closed link
        amount = _payable(amount)
        status = _canonical(status, ("Completed", "Pending"), "payment status")  # before any change
        if amount == epayment.amount:
            raise ValueError(
                f"amount={amount} is what the app asked Khalti for: use khalti.pay(epayment)."
            )
        with self._lock:
            epayment.amount = amount
        return self.pay(epayment, status=status)

    def _refuse_unstarted(self, pidx: str | KhaltiFakeEpayment, what: str) -> None:
        """Raise ``ValueError`` for an open ePayment the app never started: registered
        with :meth:`add_epayment`, and no payment of the app's has its pidx. A
        buyer coming back from it proves nothing about the app.
        """
        epayment = self.epayment(pidx)
        if epayment.status not in ("Initiated", "Pending"):
            return  # nobody can pay or cancel it: the caller says so
        if epayment.request or _the_app_knows(epayment.pidx):
            return
        raise ValueError(
            f"ePayment {epayment.pidx} was never started by the app: add_epayment() "
            f"registers it at the fake Khalti only, so the app would not know it when it is "
            f"{what}, and a test of it proves nothing. Let the app start it (post to "
            f"'django_khalti:epayment-start' or 'django_khalti:epayment-initiate'), then "
            f"take khalti.last_epayment; for a payment of another amount than the app "
            f"asked for, use khalti.pay_wrong_amount(epayment, amount=...)."
        )


def _the_app_knows(pidx: str) -> bool:
    """Whether the app's database holds a payment of ``pidx`` (False when the test
    may not use the database: then the app cannot have started it either).
    """
    from django.db import DatabaseError

    from ..models import Payment

    try:
        return Payment.objects.filter(pidx=pidx).exists()
    except (DatabaseError, RuntimeError):  # RuntimeError: pytest-django's "not allowed"
        return False
