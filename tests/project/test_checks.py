"""System checks: every id, firing and not firing, and never touching the database.

These tests carry no ``django_db`` mark on purpose: pytest-django then refuses any
database access, so a check that ran a query would fail here.
"""

import functools
from io import StringIO

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_khalti.checks import check_settings
from shop.khalti import order_amount
from shop.models import Order

#: Importable, but not a function: AMOUNT_RESOLVER must not accept it.
NOT_A_FUNCTION = {"ORD-1": 1000}

LIVE_KEY = "live_secret_key_0f9e8d7c"
TEST_KEY = "test_secret_key_0f9e8d7c"
TEST_PUBLIC_KEY = "test_public_key_0f9e8d7c"
MISSING = object()

GOOD = {
    "SECRET_KEY": LIVE_KEY,
    "PUBLIC_KEY": "live_public_key_0f9e8d7c",
    "BASE_URL": "https://khalti.com/",
    "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    "WEBSITE_URL": "https://shop.example.com",
}


def khalti(**changes):
    """The GOOD settings with ``changes``; a value of MISSING removes that key."""
    config = {**GOOD, **changes}
    return {key: value for key, value in config.items() if value is not MISSING}


def sandbox(**changes):
    """The GOOD settings with test keys and Khalti's sandbox, and ``changes``."""
    test = {"SECRET_KEY": TEST_KEY, "PUBLIC_KEY": TEST_PUBLIC_KEY}
    return khalti(**{**test, "BASE_URL": "https://dev.khalti.com/", **changes})


def messages_for(config, *, debug=False):
    with override_settings(KHALTI=config, DEBUG=debug):
        return check_settings()


def ids_for(config, *, debug=False):
    return [message.id for message in messages_for(config, debug=debug)]


def only(messages, check_id):
    found = [message for message in messages if message.id == check_id]
    assert len(found) == 1, messages
    return found[0]


def test_database_access_is_really_refused_in_this_module():
    # The guarantee the module docstring relies on: a query here fails loudly.
    with pytest.raises(RuntimeError, match="Database access not allowed"):
        Order.objects.count()


@pytest.mark.parametrize("debug", [False, True])
def test_good_live_settings_raise_nothing(debug):
    assert ids_for(GOOD, debug=debug) == []


def test_test_key_while_debugging_raises_nothing():
    assert ids_for(sandbox(), debug=True) == []


# --- django_khalti.E001: the secret key -------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [MISSING, None, "", 12345, b"live_secret_key_bytes", ["live_secret_key"]],
    ids=["missing", "none", "empty", "int", "bytes", "list"],
)
def test_e001_secret_key_missing_empty_or_not_a_string(secret):
    messages = messages_for(khalti(SECRET_KEY=secret))
    assert [m.id for m in messages] == ["django_khalti.E001"]
    error = only(messages, "django_khalti.E001")
    assert error.level == checks.ERROR
    assert error.is_serious()
    assert "SECRET_KEY" in error.msg
    assert error.hint


@pytest.mark.parametrize("config", [MISSING, None, {}], ids=repr)
def test_e001_and_e002_when_the_khalti_setting_is_absent_or_unusable(settings, config):
    if config is MISSING:
        del settings.KHALTI
    else:
        settings.KHALTI = config
    settings.DEBUG = False
    # The default BASE_URL is https: no W001 on top. The ePayment pages are served
    # (the testproject includes django_khalti.urls) with DEBUG off: E005.
    assert sorted(m.id for m in check_settings()) == [
        "django_khalti.E001",
        "django_khalti.E002",
        "django_khalti.E005",
    ]


@pytest.mark.parametrize("secret", [LIVE_KEY, TEST_KEY, "x"])
def test_e001_quiet_for_any_non_empty_string(secret):
    assert "django_khalti.E001" not in ids_for(khalti(SECRET_KEY=secret), debug=True)


def test_e001_message_never_shows_the_key_it_rejects():
    messages = messages_for(khalti(SECRET_KEY=["live_secret_key_in_a_list"]))
    error = only(messages, "django_khalti.E001")
    assert "live_secret_key_in_a_list" not in f"{error.msg} {error.hint}"


# --- django_khalti.E002: the amount resolver --------------------------------------


@pytest.mark.parametrize(
    ("resolver", "problem"),
    [
        (MISSING, "is missing"),
        (None, "is missing"),
        ("", "is missing"),
        ("shop.khalti.no_such_resolver", "cannot be imported"),
        ("no_such_module_anywhere.order_amount", "cannot be imported"),
        ("order_amount", "cannot be imported"),
        ("tests.project.test_checks.NOT_A_FUNCTION", "is not callable"),
        (1000, "is not callable"),
    ],
    ids=["missing", "none", "empty", "no-attribute", "no-module", "no-dot", "constant", "int"],
)
def test_e002_resolver_missing_unimportable_or_not_callable(resolver, problem):
    messages = messages_for(khalti(AMOUNT_RESOLVER=resolver))
    assert [m.id for m in messages] == ["django_khalti.E002"]
    error = only(messages, "django_khalti.E002")
    assert error.level == checks.ERROR
    assert f"AMOUNT_RESOLVER'] {problem}" in error.msg
    assert "order_amount(request, product_identity)" in error.hint


class CallableResolver:
    def __call__(self, request, product_identity):
        return 1000


@pytest.mark.parametrize(
    "resolver",
    [
        "shop.khalti.order_amount",
        order_amount,
        CallableResolver(),
        functools.partial(order_amount),
        lambda request, product_identity: 1000,
    ],
    ids=["dotted-path", "function", "callable-object", "partial", "lambda"],
)
def test_e002_quiet_for_a_dotted_path_or_any_callable(resolver):
    assert ids_for(khalti(AMOUNT_RESOLVER=resolver)) == []


def test_checks_never_call_the_resolver():
    # The shop's resolver reads orders from the database: a check must not run it.
    calls = []

    def resolver(request, product_identity):
        calls.append(product_identity)
        return 1000

    assert ids_for(khalti(AMOUNT_RESOLVER=resolver)) == []
    assert calls == []


# --- django_khalti.W001: https -----------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "http://khalti.com/",
        "http://pay.example.com:8080/",
        "http://10.0.0.5/",
        "http://0.0.0.0:8000/",
        "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",
    ],
)
def test_w001_base_url_without_https_on_a_public_host(base_url):
    messages = messages_for(khalti(BASE_URL=base_url))
    assert [m.id for m in messages] == ["django_khalti.W001"]
    warning = only(messages, "django_khalti.W001")
    assert warning.level == checks.WARNING
    assert not warning.is_serious()
    assert "does not use https" in warning.msg


@pytest.mark.parametrize(
    "base_url",
    [
        MISSING,  # the default, https://khalti.com/
        "https://khalti.com/",
        "https://pay.example.com:8443/",
        "HTTPS://KHALTI.COM/",
        "http://127.0.0.1:8765/",
        "http://127.8.9.10/",
        "http://localhost:8000/",
        "http://LOCALHOST/",
        "http://fake-khalti.localhost:8000/",
        "http://[::1]:9000/",
    ],
)
def test_w001_quiet_for_https_or_a_loopback_host(base_url):
    assert ids_for(khalti(BASE_URL=base_url)) == []


# --- django_khalti.W002: a test key in production ----------------------------------


def test_w002_test_key_while_debug_is_false():
    messages = messages_for(sandbox(), debug=False)
    assert [m.id for m in messages] == ["django_khalti.W002"]
    warning = only(messages, "django_khalti.W002")
    assert warning.level == checks.WARNING
    assert TEST_KEY not in f"{warning.msg} {warning.hint}"


@pytest.mark.parametrize(
    ("secret", "debug"),
    [(TEST_KEY, True), (LIVE_KEY, False), (LIVE_KEY, True), ("my_test_key", False)],
)
def test_w002_quiet_while_debugging_or_for_a_live_key(secret, debug):
    assert "django_khalti.W002" not in ids_for(khalti(SECRET_KEY=secret), debug=debug)


def test_every_problem_at_once_is_reported_at_once():
    config = {"SECRET_KEY": "", "BASE_URL": "http://khalti.com/"}
    assert sorted(ids_for(config)) == [
        "django_khalti.E001",
        "django_khalti.E002",
        "django_khalti.E005",
        "django_khalti.W001",
    ]


def test_no_message_ever_contains_the_secret_key():
    config = sandbox(BASE_URL="http://dev.khalti.com/", AMOUNT_RESOLVER="x.y")
    messages = messages_for(config)
    assert sorted(m.id for m in messages) == [
        "django_khalti.E002",
        "django_khalti.W001",
        "django_khalti.W002",
    ]
    for message in messages:
        assert TEST_KEY not in str(message)


# --- Through Django's check framework ----------------------------------------------
# All of Django's checks run here, and since Django 6.0 its model checks probe the
# database (JSONField support on SQLite): these tests allow database access. That
# dj-khalti's own checks run no query stays proven by the tagged runs around them.


@pytest.mark.django_db
def test_run_checks_includes_every_id():
    bad = {"SECRET_KEY": "", "BASE_URL": "http://khalti.com/"}
    with override_settings(KHALTI=bad):
        found = {m.id for m in checks.run_checks()}
    assert {"django_khalti.E001", "django_khalti.E002", "django_khalti.W001"} <= found

    with override_settings(KHALTI=sandbox(), DEBUG=False):
        found = {m.id for m in checks.run_checks()}
    assert "django_khalti.W002" in found


def test_checks_are_registered_under_the_django_khalti_tag():
    with override_settings(KHALTI={}):
        found = [m.id for m in checks.run_checks(tags=["django_khalti"])]
    assert sorted(found) == ["django_khalti.E001", "django_khalti.E002", "django_khalti.E005"]
    with override_settings(KHALTI=GOOD):
        assert checks.run_checks(tags=["django_khalti"]) == []


@override_settings(KHALTI=sandbox(), DEBUG=False)
def test_run_checks_returns_the_silenced_w002_marked_silenced():
    # The testproject silences W002; run_checks() still returns it, marked as such.
    from django.conf import settings

    assert "django_khalti.W002" in settings.SILENCED_SYSTEM_CHECKS
    w002 = only(checks.run_checks(tags=["django_khalti"]), "django_khalti.W002")
    assert w002.is_silenced()


@pytest.mark.django_db
@override_settings(KHALTI=sandbox(), DEBUG=False)
def test_manage_py_check_hides_the_silenced_w002():
    stdout, stderr = StringIO(), StringIO()
    call_command("check", stdout=stdout, stderr=stderr)
    assert "django_khalti.W002" not in stdout.getvalue() + stderr.getvalue()
    # W002, and the sandbox app's E001 (DEBUG off).
    assert "no issues (2 silenced)" in stdout.getvalue()


@pytest.mark.django_db
@override_settings(
    KHALTI=sandbox(),
    DEBUG=False,
    SILENCED_SYSTEM_CHECKS=["khalti_sandbox.E001", "khalti_sandbox.E002"],
)
def test_manage_py_check_shows_w002_once_not_silenced():
    stdout, stderr = StringIO(), StringIO()
    call_command("check", stdout=stdout, stderr=stderr)  # a warning does not fail
    assert "django_khalti.W002" in stderr.getvalue()


@pytest.mark.django_db
@override_settings(KHALTI=khalti(SECRET_KEY="", BASE_URL="http://khalti.com/"))
def test_manage_py_check_fails_on_e001_and_shows_w001():
    with pytest.raises(SystemCheckError) as caught:
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert "django_khalti.E001" in str(caught.value)
    assert "django_khalti.W001" in str(caught.value)


@pytest.mark.django_db
def test_checks_run_no_query_even_with_database_access_allowed(django_assert_num_queries):
    with override_settings(KHALTI=sandbox(BASE_URL="http://dev.khalti.com/")):
        with django_assert_num_queries(0):
            ids = [m.id for m in check_settings()]
            ids += [m.id for m in checks.run_checks(tags=["django_khalti"])]
    assert sorted(ids) == sorted(["django_khalti.W001", "django_khalti.W002"] * 2)


def test_e001_for_a_khalti_setting_that_is_not_a_dict(settings):
    settings.KHALTI = "not a dict"
    messages = check_settings()
    assert [m.id for m in messages] == ["django_khalti.E001"]
    assert "must be a dict" in messages[0].msg


@pytest.mark.parametrize("secret", ["   ", "\t\n"])
def test_e001_for_a_blank_secret_key(secret):
    assert ids_for(khalti(SECRET_KEY=secret)) == ["django_khalti.E001"]


def test_w002_whatever_the_case_of_the_test_prefix():
    assert ids_for(sandbox(SECRET_KEY="Test_secret_key_abc")) == ["django_khalti.W002"]


@pytest.mark.parametrize(
    "base_url", ["ftp://khalti.com/", "khalti.com", "https:///", "http://[::1", 42, None]
)
def test_e003_base_url_that_is_not_an_http_url_with_a_host(base_url):
    messages = messages_for(khalti(BASE_URL=base_url))
    assert [m.id for m in messages] == ["django_khalti.E003"]
    assert messages[0].is_serious()


def test_w001_message_never_shows_credentials_in_the_url():
    messages = messages_for(khalti(BASE_URL="http://user:hunter2@khalti.example/"))
    warning = only(messages, "django_khalti.W001")
    assert "hunter2" not in warning.msg
    assert "khalti.example" in warning.msg


@pytest.mark.parametrize("timeout", [None, "abc", 0, -1, True, (3, 10)], ids=repr)
def test_e004_timeout_that_is_not_a_positive_number(timeout):
    messages = messages_for(khalti(TIMEOUT=timeout))
    assert [m.id for m in messages] == ["django_khalti.E004"]


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t"], ids=repr)
def test_e001_a_key_with_surrounding_whitespace_never_showing_it(suffix):
    key = "live_secret_key_read_from_a_file"
    messages = messages_for(khalti(SECRET_KEY=key + suffix))
    error = only(messages, "django_khalti.E001")
    assert "whitespace" in error.msg
    assert key not in f"{error.msg} {error.hint}"


def test_e001_a_key_with_a_control_character_inside():
    assert "django_khalti.E001" in ids_for(khalti(SECRET_KEY="live_se\x00cret"))


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 121, 3600], ids=repr)
def test_e004_timeout_out_of_bounds(timeout):
    assert ids_for(khalti(TIMEOUT=timeout)) == ["django_khalti.E004"]


@pytest.mark.parametrize("grace", [None, "60", 0, -5, False, float("inf")], ids=repr)
def test_e004_signal_grace_period_that_is_not_a_positive_number(grace):
    messages = messages_for(khalti(SIGNAL_GRACE_PERIOD=grace))
    assert [m.id for m in messages] == ["django_khalti.E004"]
    assert "SIGNAL_GRACE_PERIOD" in messages[0].msg


@pytest.mark.parametrize("spacing", [None, "10", 0, -1, True, 61, float("nan")], ids=repr)
def test_e004_ask_spacing_out_of_bounds(spacing):
    messages = messages_for(khalti(ASK_SPACING=spacing))
    assert [m.id for m in messages] == ["django_khalti.E004"]
    assert "ASK_SPACING" in messages[0].msg


@pytest.mark.parametrize("spacing", [MISSING, 10, 0.5, 60])
def test_e004_quiet_for_an_ask_spacing_in_bounds(spacing):
    assert ids_for(khalti(ASK_SPACING=spacing)) == []


@pytest.mark.parametrize("timeout", [MISSING, 10, 2.5, 30])
def test_e004_quiet_for_a_positive_number(timeout):
    assert ids_for(khalti(TIMEOUT=timeout)) == []


# --- django_khalti.E005: WEBSITE_URL, the origin Khalti returns buyers to --------------


@pytest.mark.parametrize("debug", [False, True])
def test_e005_quiet_for_a_public_origin(debug):
    for origin in ["https://shop.example.com", "https://shop.example.com:8443/"]:
        assert "django_khalti.E005" not in ids_for(khalti(WEBSITE_URL=origin), debug=debug)


def test_e005_when_the_epayment_pages_are_served_without_website_url_and_debug_off():
    error = only(messages_for(khalti(WEBSITE_URL=MISSING)), "django_khalti.E005")
    assert "Host header" in error.hint
    assert "django_khalti.widget_urls" in error.hint


def test_e005_quiet_without_website_url_while_debugging():
    assert "django_khalti.E005" not in ids_for(khalti(WEBSITE_URL=MISSING), debug=True)


@override_settings(ROOT_URLCONF="tests.widget_only_urls")
def test_e005_quiet_for_a_widget_only_shop():
    assert "django_khalti.E005" not in ids_for(khalti(WEBSITE_URL=MISSING))


@pytest.mark.parametrize(
    "origin",
    [
        "shop.example.com",
        "ftp://shop.example.com",
        "https://",
        "https://user:pw@shop.example.com",
        "https://shop.example.com/?next=x",
        "https://shop.example.com/#top",
        "https://shop.example.com/store/",  # the return view's path is absolute: it would be lost
        "https://shop.example.com ",
        "https://shop example.com",
        "https://<shop>",
        "https://shop.example.com:port/",
        "https://shop.example.com\\@evil.example/",
        "https://shöp.example.com",
        42,
    ],
)
def test_e005_for_a_website_url_that_is_no_origin(origin):
    assert "django_khalti.E005" in ids_for(khalti(WEBSITE_URL=origin), debug=True)


# --- django_khalti.W004: a new database connection for every request (check --deploy) ---


@pytest.mark.parametrize(
    ("database", "per_request"),
    [
        ({"ENGINE": "django.db.backends.postgresql"}, True),
        ({"ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": 0}, True),
        ({"ENGINE": "django.db.backends.mysql", "CONN_MAX_AGE": 0}, True),
        ({"ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": 60}, False),
        ({"ENGINE": "django.db.backends.postgresql", "CONN_MAX_AGE": None}, False),
        ({"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"pool": True}}, False),
        ({"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"pool": {"max_size": 8}}}, False),
        ({"ENGINE": "django.db.backends.mysql", "CONN_MAX_AGE": 600}, False),
        ({"ENGINE": "django.db.backends.sqlite3"}, False),
    ],
)
def test_w004_is_about_servers_connected_to_anew_for_each_request(database, per_request):
    from django_khalti.checks import connections_per_request

    assert connections_per_request({"default": database}) is per_request


def test_w004_comes_with_check_deploy_only():
    from django.core.checks import run_checks
    from django.db import connection

    from django_khalti.checks import connections_per_request

    expected = connections_per_request({"default": connection.settings_dict})
    deploy = [m.id for m in run_checks(include_deployment_checks=True, tags=["django_khalti"])]
    plain = [m.id for m in run_checks(tags=["django_khalti"])]
    assert ("django_khalti.W004" in deploy) is expected
    assert "django_khalti.W004" not in plain


def test_w004_says_what_to_do():
    from django_khalti.checks.deploy import _check_connections

    shop = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop"}}
    (warning,) = _check_connections(shop)
    assert warning.id == "django_khalti.W004"
    assert "CONN_MAX_AGE" in warning.hint
    assert '"pool": True' in warning.hint


# --- django_khalti.E007: SUCCESS_URL / FAILURE_URL naming no URL -------------------------


@pytest.mark.parametrize("name", ["SUCCESS_URL", "FAILURE_URL"])
@pytest.mark.parametrize("value", ["shop:nope", "no-such-url-name", "payment-success"])
def test_e007_a_page_url_naming_no_url(name, value):
    messages = messages_for(khalti(**{name: value}))
    error = only(messages, "django_khalti.E007")
    assert [m.id for m in messages] == ["django_khalti.E007"]
    assert error.is_serious()
    assert f"KHALTI[{name!r}] = {value!r}" in error.msg
    assert "Give a URL name without arguments" in error.hint


def test_e007_a_page_url_that_is_not_a_string():
    # The return view would answer 500 (resolve_url raises TypeError on it).
    error = only(messages_for(khalti(SUCCESS_URL=42)), "django_khalti.E007")
    assert "TypeError" in error.msg


def test_e007_both_settings_at_once():
    config = khalti(SUCCESS_URL="shop:nope", FAILURE_URL="shop:neither")
    assert [m.id for m in messages_for(config)] == ["django_khalti.E007"] * 2


@pytest.mark.parametrize(
    "value",
    [
        MISSING,
        None,
        "",
        "shop:payment-success",  # a URL name, as the testproject's demo sets it
        "/thanks/",  # a path: taken as it is, as the return view takes it
        "/no/such/page/",  # ... served by whatever serves it: not this check's to say
        "https://shop.example.com/done?from=khalti",
        "thanks.html",  # a relative URL (a dot): resolve_url takes it as it is
    ],
)
def test_e007_quiet_for_a_url_name_that_resolves_a_path_or_a_url(value):
    assert ids_for(khalti(SUCCESS_URL=value, FAILURE_URL=value)) == []


@pytest.mark.django_db
@override_settings(KHALTI=khalti(SUCCESS_URL="shop:nope"))
def test_manage_py_check_fails_on_e007():
    with pytest.raises(SystemCheckError, match=r"django_khalti\.E007"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


# --- django_khalti.W005: nobody hears payment_verified ----------------------------------


@pytest.fixture
def no_receivers():
    """The testproject's payment_verified receiver (shop.receivers), disconnected."""
    from django_khalti.models import Payment
    from django_khalti.signals import payment_verified
    from shop.receivers import mark_order_paid

    late = dict(payment_verified.late)
    assert payment_verified.disconnect(mark_order_paid, sender=Payment)
    assert not payment_verified.has_listeners(Payment)
    yield payment_verified
    payment_verified.connect(mark_order_paid, sender=Payment)
    payment_verified.late = late  # connected again, but as shop.apps connected it: early


def wiring_ids():
    from django_khalti.checks import check_wiring

    return [m.id for m in check_wiring()]


def test_w005_quiet_with_the_shops_receiver_connected():
    assert wiring_ids() == []


def test_w005_without_a_payment_verified_receiver(no_receivers):
    from django_khalti.checks import check_wiring

    (warning,) = check_wiring()
    assert warning.id == "django_khalti.W005"
    assert warning.level == checks.WARNING
    assert "orders stay unpaid" in warning.msg
    assert "from django_khalti.signals import payment_verified" in warning.hint


def test_w005_runs_with_every_check_not_only_deploy(no_receivers):
    with override_settings(KHALTI=GOOD):
        assert [m.id for m in checks.run_checks(tags=["django_khalti"])] == ["django_khalti.W005"]


def test_w005_quiet_for_a_receiver_of_any_sender(no_receivers):
    def on_any_sender(sender, payment, **kwargs):
        pass

    no_receivers.connect(on_any_sender)
    try:  # connected by this test, after the apps were ready: W007 names it
        assert wiring_ids() == ["django_khalti.W007"]
    finally:
        no_receivers.disconnect(on_any_sender)


def test_w005_still_for_a_receiver_of_another_sender(no_receivers):
    def on_orders(sender, payment, **kwargs):
        pass

    no_receivers.connect(on_orders, sender=Order)
    try:
        assert wiring_ids() == ["django_khalti.W007", "django_khalti.W005"]
    finally:
        no_receivers.disconnect(on_orders, sender=Order)


# --- django_khalti.W006: dj-khalti's URLs not included -----------------------------------


@pytest.mark.parametrize(
    "urlconf",
    ["tests.project.urls_without_khalti", "tests.project.urls_khalti_without_namespace"],
)
def test_w006_without_django_khalti_urls_in_its_namespace(urlconf):
    from django_khalti.checks import check_wiring

    with override_settings(ROOT_URLCONF=urlconf):
        (warning,) = check_wiring()
    assert warning.id == "django_khalti.W006"
    assert not warning.is_serious()
    assert "'django_khalti:verify' does not resolve" in warning.msg
    assert 'path("khalti/", include("django_khalti.urls"))' in warning.hint


@pytest.mark.parametrize("urlconf", ["testproject.urls", "tests.widget_only_urls"])
def test_w006_quiet_with_the_urls_or_the_widget_urls_included(urlconf):
    with override_settings(ROOT_URLCONF=urlconf):
        assert wiring_ids() == []


@override_settings(ROOT_URLCONF="tests.project.urls_without_khalti")
def test_w006_runs_with_every_check_and_can_be_silenced():
    with override_settings(KHALTI=GOOD):
        assert [m.id for m in checks.run_checks(tags=["django_khalti"])] == ["django_khalti.W006"]
    with override_settings(KHALTI=GOOD, SILENCED_SYSTEM_CHECKS=["django_khalti.W006"]):
        (warning,) = checks.run_checks(tags=["django_khalti"])
        assert warning.is_silenced()
