"""dj-khalti's pytest plugin: the ``khalti`` fixture, a started :class:`KhaltiFake`.

pytest loads it by itself through the ``pytest11`` entry point ``django_khalti``
(disable it with ``-p no:django_khalti``). Where plugins are not loaded
automatically (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), name it in the top-level
``conftest.py``::

    pytest_plugins = ["django_khalti.testing.plugin"]

For a test that uses it, the fixture also plays the parts of production that a
test's transaction leaves out: dj-khalti's signals are sent when a request
through the test client ends (:mod:`.deliveries`), a signal left unsent fails
the test with how to send it, and ``KHALTI["WEBSITE_URL"]`` is
:data:`TEST_WEBSITE_URL` when the settings have none.

Nothing is imported here beyond pytest: ``responses`` and Django are imported
when a test asks for the fixture, so having dj-khalti installed never breaks a
test run without them. A fixture of the same name in a ``conftest.py`` or a
test module takes precedence over these, as usual with pytest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from .deliveries import KhaltiSignalSender
    from .fake import KhaltiFake

#: ``KHALTI["WEBSITE_URL"]`` for a test whose settings have none: the origin of
#: Django's test client, so that ``client.get(khalti.pay(...))`` comes back to the app.
TEST_WEBSITE_URL = "http://testserver"

_SENDER = pytest.StashKey["KhaltiSignalSender"]()


@pytest.fixture
def khalti_fake(request: pytest.FixtureRequest) -> Iterator[KhaltiFake]:
    """A fake Khalti, started for the test and stopped after it.

    The same object as the ``khalti`` fixture; this name is for projects that
    already have a fixture called ``khalti``.
    """
    try:
        from .fake import KhaltiFake
    except ImportError as exc:
        pytest.fail(
            f"The khalti fixture needs the 'responses' package ({exc}): "
            'pip install "dj-khalti[testing]"',
            pytrace=False,
        )
    _supply_website_url(request)
    sender = _signal_sender(request)
    with KhaltiFake() as fake:
        fake.signals = sender
        yield fake


@pytest.fixture
def khalti(khalti_fake: KhaltiFake) -> KhaltiFake:
    """A fake Khalti, started for the test: see :class:`django_khalti.testing.KhaltiFake`."""
    return khalti_fake


def _supply_website_url(request: pytest.FixtureRequest) -> None:
    """Set ``KHALTI["WEBSITE_URL"]`` to :data:`TEST_WEBSITE_URL` for the test when
    the settings have none (missing, None or empty), through pytest-django's
    ``settings``: the shop's own value wins, and so does anything the test sets.
    """
    from django.conf import settings

    config = getattr(settings, "KHALTI", None)
    if not isinstance(config, dict) or config.get("WEBSITE_URL"):
        return
    test_settings = request.getfixturevalue("settings")
    test_settings.KHALTI = {**config, "WEBSITE_URL": TEST_WEBSITE_URL}


def _signal_sender(request: pytest.FixtureRequest) -> KhaltiSignalSender:
    """dj-khalti's signals sent at the end of each request through the test client,
    for the test; the test's item keeps it for :func:`pytest_runtest_call`.
    """
    from .deliveries import KhaltiSignalSender

    sender = KhaltiSignalSender()
    sender.connect()
    request.addfinalizer(sender.disconnect)
    request.node.stash[_SENDER] = sender
    return sender


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    """Fail a test that used the ``khalti`` fixture and left a signal of
    dj-khalti's unsent, saying why and how to send it (added to its own failure,
    if it failed).
    """
    try:
        result = yield
    except (pytest.skip.Exception, pytest.xfail.Exception):
        raise
    except BaseException as exc:
        unsent = _unsent(item)
        if not unsent:
            raise
        if sys.version_info >= (3, 11):
            exc.add_note("\n" + unsent)
            raise
        pytest.fail(f"{type(exc).__name__}: {exc}\n\n{unsent}", pytrace=False)
    unsent = _unsent(item)
    if unsent:
        pytest.fail(unsent, pytrace=False)
    return result


def _unsent(item: pytest.Item) -> str:
    """Why the test's unsent signals of dj-khalti's were never sent ("" if none)."""
    sender = item.stash.get(_SENDER, None)
    if sender is None or not sender.enabled:
        return ""
    from .deliveries import explain, undelivered

    rows = list(undelivered())
    return explain(rows) if rows else ""
