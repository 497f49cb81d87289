"""The sandbox's input validation, with Khalti's messages where Khalti's are known."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from rest_framework import serializers

from .models import TEST_MOBILES, TEST_MPIN, bank_name

MIN_AMOUNT = 1000
MIN_AMOUNT_MESSAGE = "Amount should be greater than Rs. 10, that is 1000 paisa."


class HttpURLField(serializers.CharField):
    """An http(s) URL with a host. Laxer than ``URLField``: ``http://testserver/`` and
    other single-label hosts a local demo or test runs on are fine.
    """

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise serializers.ValidationError("Enter a valid URL.")
        return value


class VerifySerializer(serializers.Serializer):
    token = serializers.CharField()
    amount = serializers.IntegerField()


class StatusSerializer(serializers.Serializer):
    token = serializers.CharField()
    amount = serializers.IntegerField()


class RefundSerializer(serializers.Serializer):
    amount = serializers.IntegerField(required=False, min_value=1)
    mobile = serializers.CharField(required=False, allow_blank=True)


class CustomerInfoSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)
    phone = serializers.CharField(required=False, allow_blank=True)


class AmountBreakdownSerializer(serializers.Serializer):
    label = serializers.CharField()
    amount = serializers.IntegerField(min_value=0)


class InitiateSerializer(serializers.Serializer):
    return_url = HttpURLField(max_length=1000)
    website_url = HttpURLField(max_length=1000)
    amount = serializers.IntegerField(
        min_value=MIN_AMOUNT, error_messages={"min_value": MIN_AMOUNT_MESSAGE}
    )
    purchase_order_id = serializers.CharField(max_length=255)
    purchase_order_name = serializers.CharField(max_length=255)
    customer_info = CustomerInfoSerializer(required=False)
    amount_breakdown = AmountBreakdownSerializer(many=True, required=False)
    product_details = serializers.ListField(child=serializers.DictField(), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        breakdown = attrs.get("amount_breakdown")
        if breakdown and sum(item["amount"] for item in breakdown) != attrs["amount"]:
            raise serializers.ValidationError(
                {"amount": ["Amount Breakdown mismatch: the breakdown must add up to the amount."]}
            )
        return attrs


class LookupSerializer(serializers.Serializer):
    pidx = serializers.CharField()


def sandbox_mobile(value: str) -> str:
    """One of the sandbox's test Khalti ids."""
    value = value.strip()
    if value not in TEST_MOBILES:
        raise serializers.ValidationError(
            f"Use a sandbox Khalti id: {TEST_MOBILES[0]} to {TEST_MOBILES[-1]}."
        )
    return value


def sandbox_mpin(value: str) -> str:
    if value != TEST_MPIN:
        raise serializers.ValidationError(f"Incorrect MPIN (the sandbox's is {TEST_MPIN}).")
    return value


class PayerSerializer(serializers.Serializer):
    """The buyer's Khalti id and MPIN, on the hosted page and in the widget's dialog."""

    mobile = serializers.CharField()
    mpin = serializers.CharField()

    def validate_mobile(self, value: str) -> str:
        return sandbox_mobile(value)

    def validate_mpin(self, value: str) -> str:
        return sandbox_mpin(value)


class ProductSerializer(serializers.Serializer):
    """What the widget says is being bought, and for how much."""

    public_key = serializers.CharField()
    amount = serializers.IntegerField(
        min_value=MIN_AMOUNT, error_messages={"min_value": MIN_AMOUNT_MESSAGE}
    )
    product_identity = serializers.CharField(max_length=255)
    product_name = serializers.CharField(max_length=255)
    product_url = serializers.CharField(max_length=1000, required=False, allow_blank=True)


class WidgetPaySerializer(PayerSerializer, ProductSerializer):
    """What the stand-in widget script sends when the buyer presses Pay."""


class WidgetInitiateSerializer(ProductSerializer):
    """Khalti's widget, wallet tab: ``api/v2/payment/initiate/`` (other keys ignored)."""

    mobile = serializers.CharField()
    transaction_pin = serializers.CharField()

    def validate_mobile(self, value: str) -> str:
        return sandbox_mobile(value)

    def validate_transaction_pin(self, value: str) -> str:
        return sandbox_mpin(value)


class WidgetConfirmSerializer(serializers.Serializer):
    """Khalti's widget, wallet tab: ``api/v2/payment/confirm/``."""

    public_key = serializers.CharField()
    token = serializers.CharField()
    confirmation_code = serializers.CharField()
    transaction_pin = serializers.CharField()


class BankInitiateSerializer(ProductSerializer):
    """The query of the widget's bank popup, ``ebanking/initiate/?...``."""

    bank = serializers.CharField()
    mobile = serializers.RegexField(
        r"^9[678]\d{8}$", error_messages={"invalid": "Please enter a valid mobile number."}
    )
    payment_type = serializers.CharField(required=False, allow_blank=True)

    def validate_bank(self, value: str) -> str:
        if bank_name(value) is None:
            raise serializers.ValidationError("Unknown bank.")
        return value
