import pytest

from .test_parity import KitDoor, SandboxDoor


@pytest.fixture
def doors(khalti, settings, db):
    """The two doors to Khalti's rules: the testing kit and the sandbox."""
    settings.DEBUG = True  # the sandbox serves a developer's runserver
    return KitDoor(khalti), SandboxDoor()
