"""``khalti_settings``: defaults, the project's values, laziness, dotted paths."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_khalti.conf import DEFAULTS, khalti_settings
from django_khalti.exceptions import KhaltiConfigurationError, KhaltiError
from shop.khalti import order_amount

ONLY_A_KEY = {"SECRET_KEY": "live_secret_key_0f9e8d7c"}


@override_settings(KHALTI=ONLY_A_KEY)
def test_defaults_fill_in_what_the_project_leaves_out():
    assert khalti_settings.BASE_URL == "https://khalti.com/"
    assert khalti_settings.TIMEOUT == 10
    assert khalti_settings.PUBLIC_KEY is None
    assert khalti_settings.AMOUNT_RESOLVER is None
    assert khalti_settings.SECRET_KEY == "live_secret_key_0f9e8d7c"


@pytest.mark.parametrize("config", ["missing", None, {}])
def test_defaults_without_any_khalti_setting(settings, config):
    if config == "missing":
        del settings.KHALTI
    else:
        settings.KHALTI = config
    assert khalti_settings.BASE_URL == "https://khalti.com/"
    assert khalti_settings.TIMEOUT == 10
    assert khalti_settings.SECRET_KEY is None
    assert khalti_settings.AMOUNT_RESOLVER is None


@override_settings(
    KHALTI={
        "SECRET_KEY": "live_secret_key_0f9e8d7c",
        "PUBLIC_KEY": "live_public_key_0f9e8d7c",
        "BASE_URL": "https://sandbox.khalti.example/",
        "TIMEOUT": 3,
        "AMOUNT_RESOLVER": "shop.khalti.order_amount",
    }
)
def test_project_values_override_every_default():
    assert khalti_settings.SECRET_KEY == "live_secret_key_0f9e8d7c"
    assert khalti_settings.PUBLIC_KEY == "live_public_key_0f9e8d7c"
    assert khalti_settings.BASE_URL == "https://sandbox.khalti.example/"
    assert khalti_settings.TIMEOUT == 3
    assert khalti_settings.AMOUNT_RESOLVER is order_amount


def test_project_values_never_leak_into_the_defaults():
    with override_settings(KHALTI={"BASE_URL": "https://elsewhere.example/", "TIMEOUT": 1}):
        assert khalti_settings.TIMEOUT == 1
    assert DEFAULTS["BASE_URL"] == "https://khalti.com/"
    assert DEFAULTS["TIMEOUT"] == 10


def test_override_settings_takes_effect_at_once_and_is_undone_after(settings):
    settings.KHALTI = {**settings.KHALTI, "TIMEOUT": 5, "BASE_URL": "https://khalti.test/"}
    assert khalti_settings.TIMEOUT == 5  # read once, so a cached value would stick

    with override_settings(KHALTI={"TIMEOUT": 42, "BASE_URL": "https://other.example/"}):
        assert khalti_settings.TIMEOUT == 42
        assert khalti_settings.BASE_URL == "https://other.example/"
        with override_settings(KHALTI={}):
            assert khalti_settings.TIMEOUT == 10
        assert khalti_settings.TIMEOUT == 42

    assert khalti_settings.TIMEOUT == 5
    assert khalti_settings.BASE_URL == "https://khalti.test/"


def test_changing_settings_in_place_is_seen_too(settings):
    settings.KHALTI = {"SECRET_KEY": "first"}
    assert khalti_settings.SECRET_KEY == "first"
    settings.KHALTI = {"SECRET_KEY": "second"}
    assert khalti_settings.SECRET_KEY == "second"


@pytest.mark.parametrize("name", ["NOPE", "SECRET", "timeout", "secret_key", "DEBUG"])
def test_unknown_setting_raises_attribute_error_naming_it(name):
    with pytest.raises(AttributeError, match=repr(name)):
        getattr(khalti_settings, name)
    assert not hasattr(khalti_settings, name)
    assert getattr(khalti_settings, name, "fallback") == "fallback"


@override_settings(KHALTI={"NOPE": "set by the project"})
def test_unknown_setting_stays_unknown_even_if_the_project_sets_it():
    with pytest.raises(AttributeError):
        khalti_settings.NOPE


@override_settings(KHALTI={"AMOUNT_RESOLVER": "shop.khalti.order_amount"})
def test_amount_resolver_dotted_path_resolves_to_the_shops_function():
    resolver = khalti_settings.AMOUNT_RESOLVER
    assert resolver is order_amount
    assert callable(resolver)


def test_amount_resolver_given_as_a_callable_is_returned_as_is():
    def resolver(request, product_identity):
        return 1000

    with override_settings(KHALTI={"AMOUNT_RESOLVER": resolver}):
        assert khalti_settings.AMOUNT_RESOLVER is resolver


@pytest.mark.parametrize(
    "path",
    ["shop.khalti.no_such_resolver", "no_such_module_anywhere.order_amount", "order_amount"],
)
def test_unimportable_amount_resolver_raises_configuration_error(path):
    with override_settings(KHALTI={"AMOUNT_RESOLVER": path}):
        with pytest.raises(KhaltiConfigurationError) as caught:
            khalti_settings.AMOUNT_RESOLVER
    assert path in str(caught.value)
    assert "AMOUNT_RESOLVER" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


def test_configuration_error_is_improperly_configured_and_outside_the_khalti_error_tree():
    assert issubclass(KhaltiConfigurationError, ImproperlyConfigured)
    assert not issubclass(KhaltiConfigurationError, KhaltiError)
    with override_settings(KHALTI={"AMOUNT_RESOLVER": "shop.khalti.no_such_resolver"}):
        # Code that guards against Django's own exception catches it too.
        with pytest.raises(ImproperlyConfigured):
            khalti_settings.AMOUNT_RESOLVER


def test_other_settings_are_never_imported():
    # Only AMOUNT_RESOLVER is a dotted path: a string BASE_URL that looks like one stays a string.
    with override_settings(KHALTI={"BASE_URL": "shop.khalti.order_amount"}):
        assert khalti_settings.BASE_URL == "shop.khalti.order_amount"


def stale_after(timeout):
    with override_settings(KHALTI={"TIMEOUT": timeout}):
        return khalti_settings.stale_after


def test_stale_after_uses_the_default_timeout():
    with override_settings(KHALTI={}):
        assert khalti_settings.stale_after > 2 * 10


@pytest.mark.parametrize("timeout", [1, 2.5, 5, 10, 30, 120])
def test_stale_after_outlasts_a_full_connect_and_read_timeout(timeout):
    # A worker may wait TIMEOUT to connect and TIMEOUT for the answer: a claim
    # younger than that still has a live worker behind it.
    assert stale_after(timeout) > 2 * timeout


def test_stale_after_grows_with_timeout():
    values = [stale_after(timeout) for timeout in [1, 5, 10, 30, 120]]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert stale_after("20") == stale_after(20)  # a number from the environment


def test_a_khalti_setting_that_is_not_a_dict_is_a_configuration_error(settings):
    from django_khalti.conf import khalti_settings
    from django_khalti.exceptions import KhaltiConfigurationError

    settings.KHALTI = ["SECRET_KEY", "x"]
    with pytest.raises(KhaltiConfigurationError, match="must be a dict"):
        khalti_settings.TIMEOUT
