"""dj-khalti's pytest plugin: the ``khalti`` fixture, a started :class:`KhaltiFake`.

pytest loads it by itself through the ``pytest11`` entry point ``django_khalti``
(disable it with ``-p no:django_khalti``). Where plugins are not loaded
automatically (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), name it in the top-level
``conftest.py``::

    pytest_plugins = ["django_khalti.testing.plugin"]

Nothing is imported here beyond pytest: ``responses`` and Django are imported
when a test asks for the fixture, so having dj-khalti installed never breaks a
test run without them. A fixture of the same name in a ``conftest.py`` or a
test module takes precedence over these, as usual with pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from .fake import KhaltiFake


@pytest.fixture
def khalti_fake() -> Iterator[KhaltiFake]:
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
    with KhaltiFake() as fake:
        yield fake


@pytest.fixture
def khalti(khalti_fake: KhaltiFake) -> KhaltiFake:
    """A fake Khalti, started for the test: see :class:`django_khalti.testing.KhaltiFake`."""
    return khalti_fake
