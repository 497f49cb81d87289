"""The signal deliveries admin: only for who may see payments."""

from __future__ import annotations

import pytest

from ..services.test_delivery import Flaky, _verified_with_delivery, short_grace  # noqa: F401

pytestmark = pytest.mark.django_db


def test_deliveries_admin_without_payment_permission(
    client, django_user_model, expect_khalti, payload, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    with Flaky():
        delivery = _verified_with_delivery(
            expect_khalti, payload, django_capture_on_commit_callbacks, client
        )
    user = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_signaldelivery", "change_signaldelivery"])
    )
    client.force_login(user)
    lst = reverse("admin:django_khalti_signaldelivery_changelist")
    one = reverse("admin:django_khalti_signaldelivery_change", args=[delivery.pk])
    assert client.get(lst).status_code == 403
    assert client.get(one).status_code == 403
    r = client.post(lst, {"action": "resend", "_selected_action": [str(delivery.pk)], "index": "0"})
    assert r.status_code == 403
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert b"signaldelivery" not in client.get(reverse("admin:index")).content
