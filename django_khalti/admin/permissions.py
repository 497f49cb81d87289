"""Who may do what in the payments' and the signal deliveries' admins: the bases of
the two ModelAdmins (:mod:`.payments`, :mod:`.deliveries`).

The actions and the confirmation pages are typed by these bases, so that they
import nothing of the ModelAdmins, which import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.http import HttpRequest

from ..models import Payment, SignalDelivery
from .deletion import KeptRecordsAdmin
from .records import may_see_payments

if TYPE_CHECKING:
    # django-stubs makes the admin classes generic in their model; Django's are not
    # subscriptable at run time.
    _PaymentAdmin = admin.ModelAdmin[Payment]
    _DeliveryAdmin = admin.ModelAdmin[SignalDelivery]
else:
    _PaymentAdmin = _DeliveryAdmin = admin.ModelAdmin


class PaymentAdminBase(KeptRecordsAdmin, _PaymentAdmin):
    """The payments' admin's permissions: nobody adds or edits a payment; only a
    superuser deletes one, and only one that may go (:mod:`.deletion`); the actions
    have theirs.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Never: payments are made by buyers, through the app."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Payment | None = None) -> bool:
        """For the changelist's actions only: a payment's own page is read-only."""
        # A payment's page is view-only: saving it would rewrite the row from a
        # stale copy, around the guarded status changes. Changes go through the
        # actions, which is what the change permission is for.
        return obj is None and super().has_change_permission(request)

    def has_refund_permission(self, request: HttpRequest) -> bool:
        """Whether the user may refund: ``django_khalti.refund_payment``."""
        return bool(request.user.has_perm("django_khalti.refund_payment"))

    def has_resolve_refund_permission(self, request: HttpRequest) -> bool:
        """Whether the user may resolve refunds: the refund permission."""
        return self.has_refund_permission(request)

    def has_recheck_permission(self, request: HttpRequest) -> bool:
        """Whether the user may re-check payments: ``django_khalti.change_payment``."""
        return bool(request.user.has_perm("django_khalti.change_payment"))


class DeliveryAdminBase(KeptRecordsAdmin, _DeliveryAdmin):
    """The signal deliveries' admin's permissions: for whoever may also see payments;
    nobody adds or edits one; only a superuser deletes one, and only one delivered.
    """

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Never: signals are written with the status changes they announce."""
        return False

    def has_view_permission(self, request: HttpRequest, obj: SignalDelivery | None = None) -> bool:
        """Also only for whoever may see payments: a delivery shows its payment whole."""
        return may_see_payments(request) and super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Listed for whoever may view the deliveries (see :meth:`has_view_permission`)."""
        return self.has_view_permission(request) or self.has_change_permission(request)

    def has_change_permission(
        self, request: HttpRequest, obj: SignalDelivery | None = None
    ) -> bool:
        """For the changelist's action only, and for whoever may see payments: a
        delivery's own page is read-only.
        """
        return obj is None and may_see_payments(request) and super().has_change_permission(request)

    def has_resend_permission(self, request: HttpRequest) -> bool:
        """Whether the user may re-send: ``django_khalti.change_signaldelivery``."""
        return bool(request.user.has_perm("django_khalti.change_signaldelivery"))
