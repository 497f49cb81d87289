"""The shop's truth: the order and amount its resolver gives, never the browser's word."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.http import Http404, HttpRequest

from ..conf import khalti_settings
from ..exceptions import (
    KhaltiAmountTooSmall,
    KhaltiConfigurationError,
    KhaltiUnknownOrder,
)
from ..models import Payment
from ..orders import KhaltiOrder

if TYPE_CHECKING:
    from rest_framework.request import Request

logger = logging.getLogger(__name__)

Status = Payment.Status


#: The largest amount a payment holds, in paisa (the column's limit on every database).
MAX_AMOUNT = 2**63 - 1


def resolve_order(request: HttpRequest | Request | None, product_identity: str) -> KhaltiOrder:
    """The order the shop's resolver names for ``product_identity``: its canonical
    reference and the amount in paisa it expects.

    A resolver that returns a plain ``int`` names the amount; the reference given
    is then canonical. Raises :class:`KhaltiUnknownOrder` for ``None``.
    """
    resolver = khalti_settings.AMOUNT_RESOLVER
    if not callable(resolver):
        raise KhaltiConfigurationError("KHALTI['AMOUNT_RESOLVER'] must name a callable.")
    try:
        answer = resolver(request, product_identity)
    except (ObjectDoesNotExist, ValidationError, ValueError, Http404):
        # A malformed reference (``int("abc")``, a bad UUID) is an unknown order.
        logger.info("The amount resolver found no order for %r.", product_identity, exc_info=True)
        answer = None
    except Exception as exc:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] raised {type(exc).__name__}: {exc}"
        ) from exc
    if answer is None:
        raise KhaltiUnknownOrder()
    if isinstance(answer, tuple) and len(answer) == 2:
        reference, amount = answer
    else:
        reference, amount = product_identity, answer
    if isinstance(amount, (float, Decimal)):
        raise KhaltiConfigurationError(_not_paisa(amount))
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise KhaltiConfigurationError(
            "KHALTI['AMOUNT_RESOLVER'] must return a positive int (paisa), a "
            f"KhaltiOrder(reference, amount) or None, not {answer!r}."
        )
    if amount > MAX_AMOUNT:
        raise KhaltiConfigurationError(
            f"KHALTI['AMOUNT_RESOLVER'] returned {amount} paisa, more than a payment can "
            f"hold ({MAX_AMOUNT}): is it in paisa?"
        )
    if not isinstance(reference, str) or not 0 < len(reference) <= 255:
        raise KhaltiConfigurationError(
            "KHALTI['AMOUNT_RESOLVER'] returned a KhaltiOrder whose reference is not a "
            f"string of 1 to 255 characters: {reference!r}."
        )
    return KhaltiOrder(reference, amount)


def _not_paisa(amount: float | Decimal) -> str:
    """What to say of a resolver that returned a float or a ``Decimal``: most likely
    the order's price in rupees (a ``DecimalField``), where paisa are expected.
    """
    said = (
        f"KHALTI['AMOUNT_RESOLVER'] returned {amount} (a {type(amount).__name__}): amounts "
        "are integer paisa, a positive int"
    )
    exact = Decimal(str(amount)) if isinstance(amount, float) else amount
    if not exact.is_finite() or exact <= 0:
        return f"{said}."
    paisa = exact * 100
    if paisa != paisa.to_integral_value():
        return f"{said}. Rupees instead of paisa? Rs 1 is 100 paisa."
    rupees = exact.quantize(Decimal("0.01"))
    return f"{said}. Rupees instead of paisa? Rs {rupees} is {int(paisa)} paisa."


def expected_amount(request: HttpRequest | Request | None, product_identity: str) -> int:
    """The amount in paisa the shop expects for this order, from its resolver."""
    return resolve_order(request, product_identity).amount


#: Khalti's smallest ePayment, in paisa (Rs 10).
MIN_EPAYMENT_AMOUNT = 1000


def epayment_order(request: HttpRequest | Request | None, product_identity: str) -> KhaltiOrder:
    """The order an ePayment would be started for: the resolver's (an order it
    hides is :class:`KhaltiUnknownOrder`, whatever its payments), of at least
    Khalti's minimum (else :class:`KhaltiAmountTooSmall`).
    """
    order = resolve_order(request, product_identity)
    if order.amount < MIN_EPAYMENT_AMOUNT:
        raise KhaltiAmountTooSmall()
    return order
