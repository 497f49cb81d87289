"""The sandbox's input validation for what the buyer's browser sends (the hosted page,
the widget, the bank popup), with Khalti's messages where Khalti's are known.

The merchant API's input is Khalti's rules' to read (:mod:`django_khalti.rules`).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..rules.shapes import BANK, WALLET, payment_refusal
from .models import TEST_MOBILES, TEST_MPIN, bank_name


def sandbox_mobile(value: str) -> str:
    """One of the sandbox's test Khalti ids."""
    value = value.strip()
    if value not in TEST_MOBILES:
        raise serializers.ValidationError(
            f"Use a sandbox Khalti id: {TEST_MOBILES[0]} to {TEST_MOBILES[-1]}."
        )
    return value


def sandbox_mpin(value: str) -> str:
    """The sandbox's MPIN, or the error Khalti's page shows."""
    if value != TEST_MPIN:
        raise serializers.ValidationError(f"Incorrect MPIN (the sandbox's is {TEST_MPIN}).")
    return value


class PayerSerializer(serializers.Serializer[dict[str, Any]]):
    """The buyer's Khalti id and MPIN, on the hosted page and in the widget's dialog."""

    mobile = serializers.CharField()
    mpin = serializers.CharField()

    def validate_mobile(self, value: str) -> str:
        """A sandbox Khalti id."""
        return sandbox_mobile(value)

    def validate_mpin(self, value: str) -> str:
        """The sandbox's MPIN."""
        return sandbox_mpin(value)


class ProductSerializer(serializers.Serializer[dict[str, Any]]):
    """What the widget says is being bought, and for how much."""

    #: Where the buyer pays from, for the smallest amount Khalti takes.
    funded_by = WALLET

    public_key = serializers.CharField()
    amount = serializers.IntegerField()
    product_identity = serializers.CharField(max_length=255)
    product_name = serializers.CharField(max_length=255)
    product_url = serializers.CharField(max_length=1000, required=False, allow_blank=True)

    def validate_amount(self, value: int) -> int:
        """An amount Khalti takes a payment of (Rs 10; Rs 100 from a bank)."""
        refusal = payment_refusal(value, self.funded_by)
        if refusal is not None:
            raise serializers.ValidationError(refusal.message)
        return value


class WidgetPaySerializer(PayerSerializer, ProductSerializer):
    """What the stand-in widget script sends when the buyer presses Pay."""


class WidgetInitiateSerializer(ProductSerializer):
    """Khalti's widget, wallet tab: ``api/v2/payment/initiate/`` (other keys ignored)."""

    mobile = serializers.CharField()
    transaction_pin = serializers.CharField()

    def validate_mobile(self, value: str) -> str:
        """A sandbox Khalti id."""
        return sandbox_mobile(value)

    def validate_transaction_pin(self, value: str) -> str:
        """The sandbox's MPIN."""
        return sandbox_mpin(value)


class WidgetConfirmSerializer(serializers.Serializer[dict[str, Any]]):
    """Khalti's widget, wallet tab: ``api/v2/payment/confirm/``."""

    public_key = serializers.CharField()
    token = serializers.CharField()
    confirmation_code = serializers.CharField()
    transaction_pin = serializers.CharField()


class BankInitiateSerializer(ProductSerializer):
    """The query of the widget's bank popup, ``ebanking/initiate/?...``: a bank payment."""

    funded_by = BANK

    bank = serializers.CharField()
    mobile = serializers.RegexField(
        r"^9[678]\d{8}$", error_messages={"invalid": "Please enter a valid mobile number."}
    )
    payment_type = serializers.CharField(required=False, allow_blank=True)

    def validate_bank(self, value: str) -> str:
        """One of the sandbox's banks."""
        if bank_name(value) is None:
            raise serializers.ValidationError("Unknown bank.")
        return value
