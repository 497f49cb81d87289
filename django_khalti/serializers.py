"""Input validation and output shapes of the API. No business rules here."""

from __future__ import annotations

from typing import Any, ClassVar

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from .models import Payment

#: The largest amount a ``PositiveBigIntegerField`` holds on every database.
MAX_PAISA = 2**63 - 1


class PaisaField(serializers.IntegerField):
    """A positive whole number of paisa: a JSON integer or a string of digits.

    Stricter than ``IntegerField``: ``true``, ``100.0``, ``"1e3"``, ``" 100"`` and
    ``"１００"`` (digits of another script) are refused,
    since a payment amount must never be guessed from a float or a boolean.
    """

    default_error_messages = {
        "invalid": _("Enter the amount in paisa as a whole number."),
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_PAISA)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        """The amount as an int; ``invalid`` for anything but digits or a JSON integer."""
        if isinstance(data, bool) or not (
            isinstance(data, int) or (isinstance(data, str) and data.isascii() and data.isdigit())
        ):
            self.fail("invalid")
        return super().to_internal_value(data)


class VerifySerializer(serializers.Serializer[dict[str, Any]]):
    """The widget's ``onSuccess`` payload. Fields not named here are ignored."""

    token = serializers.CharField(max_length=255)
    amount = PaisaField()
    product_identity = serializers.CharField(max_length=255)
    #: Khalti's transaction id as the widget reported it: a hint, never trusted.
    idx = serializers.CharField(max_length=255, required=False, allow_blank=True)

    class Meta:
        ref_name = "KhaltiVerify"


class _Answer(serializers.Serializer[Any]):
    """An answer's shape: read only, its fields bound once per class and shared by
    every answer. DRF deep-copies a serializer's fields for each instance, which
    costs an answer more than the rest of its serializing; a read-only field keeps
    no state of what it serializes, so one bound copy serves all. Each answer has
    its own dict of them (``self.fields``); a shared field's ``context`` is not the
    answer's (no field here reads it).
    """

    #: Each class's own fields, once bound (:meth:`_fields_once`).
    _shared_fields: ClassVar[Any] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # DRF's cached ``fields``: this answer's own dict of the shared bound fields,
        # so that one answer dropping or adding a field (``self.fields``) changes no other.
        fields = BindingDict(self)
        fields.fields.update(type(self)._fields_once().fields)
        self.__dict__["fields"] = fields

    @classmethod
    def _fields_once(cls) -> Any:
        """The class's fields, bound to an instance that serializes nothing."""
        shared = cls.__dict__.get("_shared_fields")
        if shared is None:
            prototype = cls.__new__(cls)
            serializers.Serializer.__init__(prototype)
            shared = cls._shared_fields = prototype.fields
        return shared


class PaymentSerializer(_Answer):
    """What the buyer's page may see of a payment: nothing of the payer or Khalti's record.

    Fields are declared rather than derived from the model (``ModelSerializer``),
    which would introspect the model on every response.
    """

    id = serializers.UUIDField(read_only=True)
    product_identity = serializers.CharField(read_only=True)
    amount = serializers.IntegerField(read_only=True)
    status = serializers.ChoiceField(choices=Payment.Status.choices, read_only=True)
    idx = serializers.CharField(read_only=True, allow_null=True)
    verified_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        ref_name = "KhaltiPayment"


class VerifiedSerializer(_Answer):
    """The payment, verified: the answer to a widget payment's verification."""

    status = serializers.ChoiceField(choices=["verified"])
    payment = PaymentSerializer()

    class Meta:
        ref_name = "KhaltiVerified"


class CustomerInfoSerializer(serializers.Serializer[dict[str, Any]]):
    """The buyer's details for Khalti's payment page, all optional: passed on to Khalti."""

    name = serializers.CharField(max_length=255, required=False)
    email = serializers.EmailField(max_length=255, required=False)
    phone = serializers.CharField(max_length=32, required=False)

    class Meta:
        ref_name = "KhaltiCustomerInfo"


class EpaymentInitiateSerializer(serializers.Serializer[dict[str, Any]]):
    """What a page sends to start an ePayment. The amount is never among it."""

    product_identity = serializers.CharField(max_length=255)
    product_name = serializers.CharField(max_length=255)
    customer_info = CustomerInfoSerializer(required=False)

    class Meta:
        ref_name = "KhaltiEpaymentInitiate"


class EpaymentSerializer(_Answer):
    """Where to send the buyer: Khalti's payment page for this payment."""

    payment = serializers.UUIDField(source="id")
    pidx = serializers.CharField()
    payment_url = serializers.URLField()
    expires_at = serializers.DateTimeField(allow_null=True)

    class Meta:
        ref_name = "KhaltiEpayment"
