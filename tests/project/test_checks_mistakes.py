"""The common mistakes of issue 26, each answered by a check that says how to fix it, as
a developer reads them in ``manage.py check``: a misspelled key, no public key for a
widget in use, keys for the other Khalti or swapped, an http WEBSITE_URL in production,
a receiver connected from a views module, and hints in the project's own names.

No ``django_db`` mark: the checks must run no query (pytest-django would refuse it).
"""

import re
from io import StringIO

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_khalti.models import Payment
from django_khalti.signals import KhaltiSignal, payment_verified

LIVE_SECRET = "live_secret_key_not_a_real_key_checks_tests"
LIVE_PUBLIC = "live_public_key_not_a_real_key_checks_tests"
TEST_SECRET = "test_secret_key_not_a_real_key_checks_tests"
TEST_PUBLIC = "test_public_key_not_a_real_key_checks_tests"

GOOD = {
    "SECRET_KEY": LIVE_SECRET,
    "PUBLIC_KEY": LIVE_PUBLIC,
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    "WEBSITE_URL": "https://shop.example.com",
}
#: Test keys and Khalti's sandbox, as in development.
SANDBOX = {
    **GOOD,
    "SECRET_KEY": TEST_SECRET,
    "PUBLIC_KEY": TEST_PUBLIC,
    "BASE_URL": "https://dev.khalti.com/",
}
#: No template directory at all: the templates' use of the widget tag is not seen.
NO_TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": []}]


def check(*args, **settings):
    """What ``manage.py check --tag django_khalti`` prints, with ``settings`` overridden."""
    stdout, stderr = StringIO(), StringIO()
    settings.setdefault("DEBUG", True)
    with override_settings(**settings):
        try:
            call_command("check", *args, "--tag", "django_khalti", stdout=stdout, stderr=stderr)
        except SystemCheckError as error:
            return str(error)
    return stdout.getvalue() + stderr.getvalue()


def ids(output):
    return sorted(re.findall(r"\(django_khalti\.(\w+)\)", output))


def test_good_settings_say_nothing():
    assert ids(check(KHALTI=GOOD)) == []
    assert ids(check(KHALTI=SANDBOX)) == []


# --- E008: a misspelled key ---------------------------------------------------------


def test_e008_a_misspelled_key_is_an_error_naming_the_key_it_meant():
    output = check(KHALTI={**GOOD, "SUCESS_URL": "shop:payment-success"})
    assert ids(output) == ["E008"]
    assert "KHALTI['SUCESS_URL'] is an unknown key; did you mean SUCCESS_URL?" in output
    assert "Rename it to 'SUCCESS_URL'" in output


@pytest.mark.parametrize(
    ("key", "meant"),
    [("success_url", "SUCCESS_URL"), ("PUBLICKEY", "PUBLIC_KEY"), ("BASEURL", "BASE_URL")],
)
def test_e008_other_spellings(key, meant):
    output = check(KHALTI={**GOOD, key: "x"})
    assert f"KHALTI[{key!r}] is an unknown key; did you mean {meant}?" in output


def test_e008_an_unknown_key_with_no_close_match_is_still_named():
    output = check(KHALTI={**GOOD, "COLOUR": "red"})
    assert ids(output) == ["E008"]
    assert "KHALTI['COLOUR'] is an unknown key." in output
    assert "Its settings are: SECRET_KEY, PUBLIC_KEY, BASE_URL" in output


def test_e008_never_shows_a_key_used_as_a_key():
    output = check(KHALTI={**GOOD, LIVE_SECRET: True})
    assert ids(output) == ["E008"]
    assert LIVE_SECRET not in output


# --- E009: no public key while the widget is used --------------------------------------


def test_e009_no_public_key_while_a_template_uses_the_widget_tag():
    # The testproject's shop/order.html and shop/pay.html use {% khalti_widget %}.
    output = check(KHALTI={**GOOD, "PUBLIC_KEY": ""})
    assert ids(output) == ["E009"]
    assert re.search(r"the template 'shop/(order|pay)\.html' uses \{% khalti_widget %\}", output)
    assert "Set it to your merchant public key" in output


def test_e009_reads_the_template_dirs_of_the_settings(tmp_path):
    (tmp_path / "checkout").mkdir()
    (tmp_path / "checkout" / "pay.html").write_text(
        "{% load khalti %}<h1>Pay</h1>\n{%  khalti_widget order.reference %}"
    )
    templates = [{**NO_TEMPLATES[0], "DIRS": [tmp_path]}]
    output = check(KHALTI={**GOOD, "PUBLIC_KEY": None}, TEMPLATES=templates)
    assert "the template 'checkout/pay.html' uses {% khalti_widget %}" in output


def test_e009_no_public_key_while_only_the_widget_urls_are_included():
    output = check(
        KHALTI={key: value for key, value in GOOD.items() if key != "PUBLIC_KEY"},
        TEMPLATES=NO_TEMPLATES,
        ROOT_URLCONF="tests.widget_only_urls",
    )
    assert ids(output) == ["E009"]
    assert "tests/widget_only_urls.py includes django_khalti.widget_urls" in output


def test_e009_quiet_for_an_epayment_shop_whose_templates_use_no_widget():
    # django_khalti.urls serves the widget's verify too: an ePayment-only shop includes it.
    assert ids(check(KHALTI={**GOOD, "PUBLIC_KEY": None}, TEMPLATES=NO_TEMPLATES)) == []


# --- E010, E011: swapped or equal keys --------------------------------------------------


def test_e010_swapped_keys_each_an_error_showing_neither_key():
    # The reproduction of issue 26: the two keys in each other's place.
    output = check(KHALTI={**GOOD, "SECRET_KEY": LIVE_PUBLIC, "PUBLIC_KEY": LIVE_SECRET})
    assert ids(output) == ["E010", "E010"]
    assert "KHALTI['SECRET_KEY'] is shaped like a public key" in output
    assert "KHALTI['PUBLIC_KEY'] is shaped like a secret key" in output
    assert "the widget would publish it in the page's HTML" in output
    assert "SECRET_KEY takes the one starting 'live_secret_key_'" in output
    assert LIVE_SECRET not in output
    assert LIVE_PUBLIC not in output


@pytest.mark.parametrize("debug", [True, False])
def test_e010_is_an_error_whatever_debug(debug):
    output = check(KHALTI={**GOOD, "PUBLIC_KEY": LIVE_SECRET, "SECRET_KEY": "x"}, DEBUG=debug)
    assert "E010" in ids(output)


def test_e011_the_two_keys_equal():
    output = check(KHALTI={**GOOD, "PUBLIC_KEY": LIVE_SECRET})
    assert ids(output) == ["E010", "E011"]
    assert "KHALTI['SECRET_KEY'] and KHALTI['PUBLIC_KEY'] are the same key" in output
    assert LIVE_SECRET not in output


def test_e011_the_two_keys_equal_whatever_their_shape():
    bare = "0123456789abcdef0123456789abcdef"
    output = check(KHALTI={**GOOD, "SECRET_KEY": bare, "PUBLIC_KEY": bare + "\n"})
    assert ids(output) == ["E011"]
    assert bare not in output


# --- W009: keys for the other Khalti -------------------------------------------------------


def test_w009_live_keys_with_khaltis_sandbox():
    output = check(KHALTI={**GOOD, "BASE_URL": "https://dev.khalti.com/"})
    assert ids(output) == ["W009", "W009"]
    assert (
        "KHALTI['SECRET_KEY'] is a live key, but BASE_URL is Khalti's sandbox "
        "(dev.khalti.com): Khalti refuses every call made with it (HTTP 401)." in output
    )
    assert "KHALTI['PUBLIC_KEY'] is a live key" in output


def test_w009_live_keys_with_the_older_sandbox():
    output = check(KHALTI={**GOOD, "BASE_URL": "https://a.khalti.com/"})
    assert "BASE_URL is Khalti's sandbox (a.khalti.com)" in output


@pytest.mark.parametrize("base_url", [None, "https://khalti.com/"])
def test_w009_test_keys_with_khaltis_live_site(base_url):
    config = {**SANDBOX, "BASE_URL": base_url}
    if base_url is None:
        del config["BASE_URL"]  # the default: khalti.com
    output = check(KHALTI=config)
    assert ids(output) == ["W009", "W009"]
    assert "KHALTI['SECRET_KEY'] is a test key, but BASE_URL is Khalti's live site" in output
    assert "Use your test keys (test_...) with Khalti's sandbox" in output


def test_w009_a_live_key_and_a_test_key():
    output = check(KHALTI={**GOOD, "PUBLIC_KEY": TEST_PUBLIC, "BASE_URL": "http://127.0.0.1:9/"})
    assert ids(output) == ["W009"]
    assert "KHALTI['SECRET_KEY'] is a live key, but KHALTI['PUBLIC_KEY'] a test key" in output
    assert TEST_PUBLIC not in output
    assert LIVE_SECRET not in output


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000/sandbox/", "https://khalti.test/", "https://pay.example/"]
)
def test_w009_quiet_for_hosts_that_are_not_khaltis(base_url):
    assert ids(check(KHALTI={**GOOD, "BASE_URL": base_url})) == []
    assert ids(check(KHALTI={**SANDBOX, "BASE_URL": base_url})) == []


def test_w009_quiet_for_bare_keys():
    bare = {**GOOD, "SECRET_KEY": "a" * 32, "PUBLIC_KEY": "b" * 32}
    assert ids(check(KHALTI={**bare, "BASE_URL": "https://dev.khalti.com/"})) == []


# --- W008: an http WEBSITE_URL under check --deploy -------------------------------------------


def test_w008_an_http_website_url_under_check_deploy():
    config = {**GOOD, "WEBSITE_URL": "http://shop.example.com"}
    output = check("--deploy", KHALTI=config, DEBUG=False)
    assert "W008" in ids(output)
    assert "KHALTI['WEBSITE_URL'] uses http://" in output
    assert "https:// origin in production" in output


def test_w008_not_without_deploy_nor_for_https():
    assert "W008" not in ids(check(KHALTI={**GOOD, "WEBSITE_URL": "http://127.0.0.1:8000"}))
    assert "W008" not in ids(check("--deploy", KHALTI=GOOD, DEBUG=False))


# --- W007: a receiver connected from a views module ---------------------------------------


@pytest.fixture
def late_receiver_urls():
    """ROOT_URLCONF importing a views module that connects a receiver; disconnected after."""
    with override_settings(ROOT_URLCONF="tests.project.urls_late_receiver"):
        yield
    from tests.project.late_receiver_views import mark_order_paid_from_views

    payment_verified.disconnect(mark_order_paid_from_views, sender=Payment)


def test_w007_a_receiver_connected_by_a_views_module_is_named(late_receiver_urls):
    output = check(KHALTI=GOOD)
    assert ids(output) == ["W007"]
    assert (
        "tests.project.late_receiver_views.mark_order_paid_from_views, a receiver of "
        "django_khalti.signals.payment_verified, is connected only once "
        "tests.project.late_receiver_views is imported" in output
    )
    assert "manage.py shell, khalti_reconcile" in output
    # The hint names the project's own app and its AppConfig.
    assert "Import the module that connects it from ShopConfig.ready() (shop/apps.py)" in output


def test_w007_not_for_the_receiver_connected_in_app_config_ready():
    # shop.apps.ShopConfig.ready() imports shop.receivers: connected in every process.
    from shop.receivers import mark_order_paid

    assert payment_verified.has_listeners(Payment)
    assert mark_order_paid.__name__ not in check(KHALTI=GOOD)
    assert ids(check(KHALTI=GOOD)) == []


def test_a_khalti_signal_tells_a_receiver_connected_before_the_apps_were_ready(monkeypatch):
    signal = KhaltiSignal()

    def early(sender, **kwargs):
        pass

    def late(sender, **kwargs):
        pass

    monkeypatch.setattr(apps, "ready", False)  # as during AppConfig.ready()
    signal.connect(early)
    monkeypatch.setattr(apps, "ready", True)
    signal.connect(late)
    signal.connect(early)  # connected again: still connected early
    assert [name for _, name in signal.late_receivers()] == [f"{__name__}.{late.__qualname__}"]
    signal.disconnect(late)
    assert signal.late_receivers() == []


# --- hints in the project's own names ----------------------------------------------------------


def test_e007_hint_suggests_the_projects_closest_url_name():
    output = check(KHALTI={**GOOD, "SUCCESS_URL": "shop:payment-sucess"})
    assert ids(output) == ["E007"]
    assert "Did you mean 'shop:payment-success'?" in output


def test_e007_hint_names_only_urls_the_project_has():
    # The tutorial's 'shop:thanks' is no URL of this project: the hint must not offer it.
    output = check(KHALTI={**GOOD, "FAILURE_URL": "checkout:oops"})
    hint = output[output.index("HINT:") :]
    suggested = re.findall(r"'([\w-]+:[\w-]+)'", hint)
    assert suggested, hint
    assert "shop:thanks" not in suggested
    from django.urls import reverse

    for name in suggested:
        reverse(name)  # each one exists (NoReverseMatch otherwise)


def test_w006_hint_names_the_projects_urlconf():
    output = check(KHALTI=GOOD, ROOT_URLCONF="tests.project.urls_without_khalti")
    assert ids(output) == ["W006"]
    assert 'include("django_khalti.urls")) to tests/project/urls_without_khalti.py' in output


def test_w005_hint_names_the_projects_app_config():
    from shop.receivers import mark_order_paid

    late = dict(payment_verified.late)
    payment_verified.disconnect(mark_order_paid, sender=Payment)
    try:
        output = check(KHALTI=GOOD)
    finally:
        payment_verified.connect(mark_order_paid, sender=Payment)
        payment_verified.late = late
    assert ids(output) == ["W005"]
    assert "in ShopConfig.ready() (shop/apps.py)" in output


def test_e009_quiet_for_a_widget_tag_in_a_template_comment(tmp_path):
    (tmp_path / "pay.html").write_text("{% load khalti %}{# {% khalti_widget o.ref %} #}")
    templates = [{**NO_TEMPLATES[0], "DIRS": [tmp_path]}]
    assert ids(check(KHALTI={**GOOD, "PUBLIC_KEY": None}, TEMPLATES=templates)) == []
