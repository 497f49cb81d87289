"""shop/refunds.py: give a buyer's money back from your own code."""

from django_khalti.exceptions import (
    KhaltiInvalidRefundAmount,
    KhaltiNotRefundable,
    KhaltiRefundConflict,
    KhaltiRefundFailed,
    KhaltiRefundInProgress,
    KhaltiRefundUnknown,
)
from django_khalti.models import Payment, rupees
from django_khalti.services import refund_payment


def refund(payment: Payment, amount: int | None = None, *, mobile=None, by=None) -> str:
    """Refund ``amount`` paisa of ``payment`` (all that remains without it), and say
    what became of it, for the person who asked.
    """
    try:
        done = refund_payment(payment, amount=amount, mobile=mobile, by=by)
    except KhaltiRefundUnknown as exc:
        # No clear answer from Khalti: the money may have moved. The refund stays
        # pending until khalti_reconcile, or a person in the admin, settles it.
        return f"Not known yet: {exc.detail}"
    except KhaltiRefundConflict as exc:
        # Settled otherwise meanwhile: Khalti's answer stands; the admin says what.
        return f"Needs a look in the admin: {exc.detail}"
    except (
        KhaltiNotRefundable,  # not confirmed by Khalti, or nothing left to refund
        KhaltiInvalidRefundAmount,  # more than remains (or not whole, if it needs review)
        KhaltiRefundInProgress,  # another refund of it awaits Khalti's answer
        KhaltiRefundFailed,  # Khalti refused it: nothing was refunded
    ) as exc:
        return f"Not refunded: {exc.detail}"
    payment = done.payment  # the payment as it stands now
    return (
        f"Refunded Rs {rupees(done.amount)}; Rs {rupees(payment.refunded_amount)} "
        f"refunded in all, the payment is {payment.get_status_display().lower()}."
    )
