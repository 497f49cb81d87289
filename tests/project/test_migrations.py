import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_models_and_migrations_agree():
    # Exits non-zero (SystemExit) when a model change lacks its migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_migrations_have_descriptive_names():
    from pathlib import Path

    import django_khalti

    folder = Path(django_khalti.__file__).parent / "migrations"
    names = [p.stem for p in folder.glob("0*.py")]
    assert names
    assert not [n for n in names if "auto" in n or n.endswith("initial")]
