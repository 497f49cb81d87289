"""DRF throttling of the API: the ``khalti`` rate, and the project's own throttles."""

from __future__ import annotations

import json

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.throttling import AnonRateThrottle

from .conftest import (
    INITIATE,
    VERIFY,
    assert_untouched,
)

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]


@pytest.fixture
def throttle_cache():
    """Throttles count in Django's cache: a clean count for each test."""
    cache.clear()
    yield cache
    cache.clear()


def refused_verify(client, **extra):
    return client.post(
        VERIFY,
        data=json.dumps({"token": "t", "amount": 1000, "product_identity": "ORD-NONE"}),
        content_type="application/json",
        **extra,
    )


def test_the_widget_endpoint_answers_429_past_the_khalti_rate(
    settings, throttle_cache, expect_khalti, shop
):
    settings.REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"khalti": "5/min"}}
    client = Client()
    assert [refused_verify(client).status_code for _ in range(5)] == [404] * 5
    # The 6th is refused before anything is read, even an honest payload.
    honest = {"token": "QUvsT4Y8aWd3zTVdLCbsNs", "amount": 1000, "product_identity": "ORD-1"}
    response = client.post(VERIFY, data=json.dumps(honest), content_type="application/json")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert "throttled" in response.json()["detail"]
    assert int(response["Retry-After"]) > 0
    # The rate is per client (and shared by the kit's endpoints).
    assert client.post(INITIATE, data={"product_identity": "ORD-1"}).status_code == 429
    assert refused_verify(Client(), REMOTE_ADDR="10.0.0.2").status_code == 404
    assert_untouched(expect_khalti, shop)


def test_without_a_khalti_rate_nothing_is_throttled_even_with_drfs_scoped_throttle(
    settings, throttle_cache, expect_khalti, shop
):
    settings.REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"other": "1/min"},
    }
    client = Client()
    assert {refused_verify(client).status_code for _ in range(20)} == {404}
    assert_untouched(expect_khalti, shop)


def test_the_projects_own_throttles_apply_too(
    settings, throttle_cache, expect_khalti, shop, monkeypatch
):
    settings.REST_FRAMEWORK = {
        "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
        "DEFAULT_THROTTLE_RATES": {"anon": "3/min"},
    }
    # DRF's own throttles keep the rates they saw at import (a class attribute).
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    client = Client()
    assert [refused_verify(client).status_code for _ in range(4)] == [404, 404, 404, 429]
    assert_untouched(expect_khalti, shop)
