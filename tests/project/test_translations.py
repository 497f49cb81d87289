"""Translations: what a Nepali reader (``Accept-Language: ne``) sees, and the shipped catalogue.

Machine codes (``code``, status values, field names) never change with the language;
only the human text does. The catalogue tests need GNU gettext (``apt-get install
gettext``): without it they are skipped, never in CI.
"""

import json
import os
import shutil
import subprocess
from gettext import GNUTranslations
from pathlib import Path

import pytest
import requests
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import django_khalti
from django_khalti.models import Payment, order_key
from shop.models import Order

from ..conftest import epayment_started

pytestmark = pytest.mark.django_db

PACKAGE = Path(django_khalti.__file__).parent
PO = PACKAGE / "locale" / "ne" / "LC_MESSAGES" / "django.po"
MO = PO.with_suffix(".mo")
VERIFY = reverse("django_khalti:verify")
NE = {"Accept-Language": "ne"}


def post(client, data, **kwargs):
    return client.post(VERIFY, json.dumps(data), content_type="application/json", **kwargs)


# --- the API: Nepali `detail`, the same `code` -----------------------------------------


@pytest.mark.parametrize("accept", ["ne", "ne-NP,ne;q=0.9,en;q=0.8"])
def test_a_nepali_reader_gets_the_refusal_in_nepali_with_the_same_code(
    client, expect_khalti, payload, accept
):
    english = post(client, {**payload, "product_identity": "NOPE"})
    nepali = post(
        client, {**payload, "product_identity": "NOPE"}, headers={"Accept-Language": accept}
    )
    assert english.status_code == nepali.status_code == 404
    assert english.json() == {
        "code": "unknown_order",
        "detail": "No order with this product identity is awaiting payment.",
    }
    assert nepali.json() == {
        "code": "unknown_order",
        "detail": "यो उत्पादन पहिचान भएको कुनै पनि अर्डर भुक्तानीको प्रतीक्षामा छैन।",
    }
    assert nepali["Content-Language"] == "ne"


def test_amount_mismatch_in_nepali(client, expect_khalti, payload):
    response = post(client, {**payload, "amount": 10}, headers=NE)
    assert response.status_code == 400
    assert response.json() == {
        "code": "amount_mismatch",
        "detail": "रकम अर्डरको रकमसँग मेल खाँदैन।",
    }


def test_bad_input_is_a_nepali_field_error_under_the_same_field(client, expect_khalti, payload):
    response = post(client, {**payload, "amount": "१०००"}, headers=NE)
    assert response.status_code == 400
    assert response.json() == {"amount": ["रकम पैसामा पूर्णाङ्कको रूपमा लेख्नुहोस्।"]}
    assert post(client, {**payload, "amount": "१०००"}).json() == {
        "amount": ["Enter the amount in paisa as a whole number."]
    }
    assert not expect_khalti.calls


def test_a_misconfigured_shop_answers_503_in_nepali(client, expect_khalti, payload):
    with override_settings(
        KHALTI={"SECRET_KEY": "", "AMOUNT_RESOLVER": "shop.khalti.order_amount"}
    ):
        response = post(client, payload, headers=NE)
    assert response.status_code == 503
    assert response.json() == {"code": "not_configured", "detail": "अहिले भुक्तानी उपलब्ध छैन।"}


def test_khalti_timing_out_answers_504_in_nepali(client, expect_khalti, payload):
    expect_khalti.verify(payload["token"], 1000, body=requests.exceptions.ReadTimeout())
    response = post(client, payload, headers=NE)
    assert response.status_code == 504
    assert response.json() == {
        "code": "khalti_unavailable",
        "detail": "खल्तीले समयमै जवाफ दिएन। भुक्तानी प्रक्रियामा छ; केही बेरपछि फेरि प्रयास गर्नुहोस्।",
    }
    assert Payment.objects.get().status == "pending"  # the status value stays a code


def test_a_reason_khalti_gave_reaches_the_nepali_reader_inside_nepali_text(
    client, expect_khalti, payload
):
    expect_khalti.refused(payload["token"], 1000)
    response = post(client, payload, headers=NE)
    assert response.status_code == 400
    assert response.json() == {
        "code": "verification_failed",
        "detail": (
            "खल्तीले भुक्तानी अस्वीकार गर्‍यो (token: Invalid token.) र यसलाई Error भनी "
            "देखाउँछ: Transaction not found"
        ),
    }


# --- the ePayment result page ------------------------------------------------------------


def test_the_epayment_result_page_renders_in_nepali(client, expect_khalti, order):
    expect_khalti.initiate(order.total, order.reference, json=epayment_started())
    initiated = client.post(
        reverse("django_khalti:epayment-initiate"),
        json.dumps({"product_identity": order.reference, "product_name": "Dragon"}),
        content_type="application/json",
    )
    pidx = initiated.json()["pidx"]
    expect_khalti.lookup(pidx, "epayment_lookup_completed")
    page = client.get(reverse("django_khalti:epayment-return"), {"pidx": pidx}, headers=NE)
    assert page.status_code == 200
    text = page.content.decode()
    assert '<html lang="ne">' in text
    assert "<title>भुक्तानी प्राप्त भयो</title>" in text
    assert "खल्तीले अर्डर ORD-1 का लागि तपाईंको रु. 10.00 को भुक्तानी पुष्टि गर्‍यो। धन्यवाद!" in text
    assert 'data-state="verified"' in text
    assert "Payment received" not in text


def test_a_refused_start_shows_the_nepali_page_with_the_nepali_reason(client, expect_khalti):
    Order.objects.create(reference="CHEAP", total=500)
    page = client.get(reverse("django_khalti:epayment-start", args=["CHEAP"]), headers=NE)
    assert page.status_code == 400
    text = page.content.decode()
    assert "<h1>भुक्तानी पूरा भएन</h1>" in text
    assert "खल्तीले रु. 10 वा सोभन्दा बढीको अनलाइन भुक्तानी मात्र लिन्छ।" in text
    assert not expect_khalti.calls


# --- the admin -----------------------------------------------------------------------------


@pytest.fixture
def verified(db):
    return Payment.objects.create(
        token="tok-ne",
        product_identity="ORD-NE",
        amount=123456,
        status=Payment.Status.VERIFIED,
        idx="idx-ne",
        verified_at=timezone.now(),
        order_claim=order_key("ORD-NE"),
    )


def test_the_admin_in_nepali_shows_translated_labels_and_actions(admin_client, verified):
    page = admin_client.get(
        reverse("admin:django_khalti_payment_changelist"), headers=NE
    ).content.decode()
    for label in [
        "खल्ती भुक्तानीहरू",  # the app and the model
        "अर्डर सन्दर्भ",  # a column
        "रकम (रु.)",  # a computed column
        "प्रमाणित",  # the status badge
        "विजेट (KPG-1)",  # a choice label in the filter
        "खल्तीसँग पुनः जाँच गर्नुहोस्",  # an action
        "खल्तीमार्फत फिर्ता गर्नुहोस्…",
        "अज्ञात फिर्ताको हातैले टुङ्गो लगाउनुहोस्…",
    ]:
        assert label in page, label
    assert "Re-check with Khalti" not in page
    assert "khalti-status-verified" in page  # the status value stays a code

    change = admin_client.get(
        reverse("admin:django_khalti_payment_change", args=[verified.pk]), headers=NE
    ).content.decode()
    for label in ["प्रशोधन", "प्रशोधनका लागि लिइएको", "प्रयासहरू", "ORD-NE · रु. 1,234.56 · प्रमाणित"]:
        assert label in change, label


def test_admin_action_messages_and_pages_are_nepali(admin_client, expect_khalti, verified):
    pending = Payment.objects.create(
        token="tok-ne-pending",
        product_identity="ORD-NE-P",
        amount=1000,
        order_claim=order_key("ORD-NE-P"),
        claimed_idx="idx-tok-ne-pending",
    )
    expect_khalti.complete(pending.token, pending.amount)
    changelist = reverse("admin:django_khalti_payment_changelist")
    selected = {"_selected_action": [str(pending.pk), str(verified.pk)], "index": "0"}

    response = admin_client.post(
        changelist, {"action": "recheck", **selected}, follow=True, headers=NE
    )
    assert [str(m) for m in response.context["messages"]] == [
        "खल्तीसँग 1 वटा पुनः जाँच गरियो: 1 प्रमाणित।"
    ]

    response = admin_client.post(
        changelist,
        {"action": "refund", "_selected_action": [str(verified.pk)], "index": "0"},
        headers=NE,
    )
    page = response.content.decode()
    assert "यो भुक्तानी खल्तीमार्फत फिर्ता गर्ने?" in page
    assert "फिर्ता गर्न मिल्ने जम्मा: रु. 1,234.56" in page
    assert 'value="हो, फिर्ता गर्नुहोस्"' in page


# --- the catalogue --------------------------------------------------------------------------


@pytest.fixture
def gettext_tools():
    missing = [
        tool for tool in ("xgettext", "msgmerge", "msgen", "msgfmt") if not shutil.which(tool)
    ]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the catalogue: install GNU gettext (no {missing})")
        pytest.skip(f"GNU gettext is not installed (no {missing}): apt-get install gettext")


def compiled(po, mo, *options):
    """The messages msgfmt compiles from ``po`` into ``mo`` (fuzzy and empty ones left out)."""
    subprocess.run(["msgfmt", *options, "-o", str(mo), str(po)], check=True)
    with mo.open("rb") as stream:
        return GNUTranslations(stream)._catalog  # type: ignore[attr-defined]  # private, stable


def extracted(directory, monkeypatch):
    """Every message ``makemessages`` finds in django_khalti/ (each translated as itself)."""
    copy = directory / "django_khalti"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("locale", "__pycache__"))
    (copy / "locale").mkdir()
    monkeypatch.chdir(copy)
    call_command("makemessages", locale=["ne"], no_location=True, verbosity=0)
    po = copy / "locale" / "ne" / "LC_MESSAGES" / "django.po"
    subprocess.run(["msgen", "-o", str(po), str(po)], check=True)
    messages = compiled(po, po.with_suffix(".mo"), "--use-fuzzy")
    messages.pop("")  # the header
    return set(messages)


def test_every_message_is_translated_in_the_shipped_catalogue(gettext_tools, tmp_path, monkeypatch):
    translated = compiled(PO, tmp_path / "shipped.mo", "--check")
    wanted = extracted(tmp_path, monkeypatch)
    assert len(wanted) > 100  # the extraction found the app's messages
    missing = sorted(str(m) for m in wanted - set(translated))
    assert not missing, f"untranslated, fuzzy or absent in {PO}: {missing}"
    stale = sorted(str(m) for m in set(translated) - wanted - {""})
    assert not stale, f"no longer in the code, still in {PO}: {stale}"


def test_the_shipped_mo_is_compiled_from_the_shipped_po(gettext_tools, tmp_path):
    with MO.open("rb") as stream:
        shipped = GNUTranslations(stream)._catalog  # type: ignore[attr-defined]  # private, stable
    assert shipped == compiled(PO, tmp_path / "fresh.mo", "--check"), f"{MO} is stale"
