"""Count each payment's status changes, and number its signals by them: a payment's
signals are delivered in that order (issue 25).

Both columns default to 0 in the database too, so workers still running the
previous release during a rolling deploy can insert rows. Signals written before
this migration keep ``sequence`` 0 and are ordered among
themselves by ``created_at``; a payment that has any starts counting at 1, so its
next signal comes after them.
"""

from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import Exists, OuterRef


def count_past_changes(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Payment = apps.get_model("django_khalti", "Payment")
    SignalDelivery = apps.get_model("django_khalti", "SignalDelivery")
    announced = SignalDelivery.objects.filter(payment=OuterRef("pk"))
    Payment.objects.filter(Exists(announced)).update(status_changes=1)


class Migration(migrations.Migration):
    dependencies = [
        ("django_khalti", "0010_add_verified_at_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="status_changes",
            field=models.PositiveIntegerField(
                db_default=0, default=0, editable=False, verbose_name="status changes"
            ),
        ),
        migrations.AddField(
            model_name="signaldelivery",
            name="sequence",
            field=models.PositiveIntegerField(db_default=0, default=0, verbose_name="sequence"),
        ),
        migrations.RunPython(count_past_changes, migrations.RunPython.noop, elidable=True),
    ]
