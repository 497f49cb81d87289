"""``rest_framework`` in ``INSTALLED_APPS`` is not required (README says so).

djangorestframework is a dependency, imported by dj-khalti's views; its *app*
gives templates and static files for DRF's browsable API (dj-khalti answers JSON
only), DRF's own system checks and its message catalogues. Each of dj-khalti's
pages, its API, its admin and its checks is used here with the app removed.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.conf import settings
from django.core import checks
from django.test import override_settings
from django.urls import reverse

from django_khalti.models import Payment
from shop.models import Order

pytestmark = pytest.mark.django_db

WITHOUT_DRF = [app for app in settings.INSTALLED_APPS if app != "rest_framework"]


@pytest.fixture
def without_drf_app():
    assert "rest_framework" in settings.INSTALLED_APPS  # the testproject's own settings
    with override_settings(INSTALLED_APPS=WITHOUT_DRF):
        assert not apps.is_installed("rest_framework")
        yield


def test_verify_answers_json_without_the_rest_framework_app(
    client, khalti_fake, without_drf_app, django_capture_on_commit_callbacks
):
    order = Order.objects.create(reference="ORD-1", total=1000)
    payment = khalti_fake.add_payment(amount=1000)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("django_khalti:verify"),
            payment.payload("ORD-1"),
            content_type="application/json",
        )
    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    order.refresh_from_db()
    assert order.paid
    refused = client.post(reverse("django_khalti:verify"), "{", content_type="application/json")
    assert refused.status_code == 400
    assert "JSON parse error" in refused.json()["detail"]  # DRF's own message, untranslated


def test_the_epayment_pages_and_initiate_without_the_rest_framework_app(
    client, khalti_fake, without_drf_app
):
    Order.objects.create(reference="ORD-1", total=1000)
    start = reverse("django_khalti:epayment-start", args=["ORD-1"])
    assert client.get(start).status_code == 200  # the Pay page renders
    started = client.post(start)
    assert started["Location"] == khalti_fake.last_epayment.payment_url
    back = client.get(khalti_fake.pay(khalti_fake.last_epayment))
    assert back.status_code == 200
    assert Payment.objects.get().status == Payment.Status.VERIFIED


def test_the_admin_and_the_checks_without_the_rest_framework_app(admin_client, without_drf_app):
    assert admin_client.get(reverse("admin:django_khalti_payment_changelist")).status_code == 200
    found = [m for m in checks.run_checks() if not m.is_silenced()]
    assert found == []


def test_what_the_rest_framework_app_gives_drfs_own_messages_translated(client, settings):
    # DRF's catalogue is read from INSTALLED_APPS: without the app, DRF's own
    # messages (here an unsupported media type) stay English in every language.
    def refusal():
        response = client.post(
            reverse("django_khalti:verify"),
            "token=x",
            content_type="text/plain",
            headers={"accept-language": "fr"},
        )
        assert response.status_code == 415
        return response.json()["detail"]

    settings.LANGUAGES = [("en", "English"), ("fr", "French")]
    assert refusal().startswith("Type de média")
    with override_settings(INSTALLED_APPS=WITHOUT_DRF):
        assert refusal().startswith("Unsupported media type")
