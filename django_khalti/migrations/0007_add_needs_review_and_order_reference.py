"""Issue 12 (money safety): the ``needs_review`` status, the order's canonical
reference (what the order claim is on), Khalti's received amount, and the token
claim that lets a token Khalti refused be bound again.

Existing payments keep their meaning: the reference the page gave was the only
one known, so it is the canonical one; every payment that has not failed keeps
its token bound.
"""

from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.models import F


def copy_references_and_claim_tokens(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    Payment = apps.get_model("django_khalti", "Payment")
    Payment.objects.update(order_reference=F("product_identity"))
    Payment.objects.exclude(status="failed").exclude(token__isnull=True).update(
        token_claim=F("token")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("django_khalti", "0006_add_processing_verbose_names"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="order_reference",
            field=models.CharField(
                db_index=True, default="", max_length=255, verbose_name="order reference"
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="payment",
            name="received_amount",
            field=models.PositiveBigIntegerField(
                blank=True, null=True, verbose_name="received (paisa)"
            ),
        ),
        migrations.AddField(
            model_name="payment",
            name="token_claim",
            field=models.CharField(editable=False, max_length=255, null=True, unique=True),
        ),
        migrations.RunPython(copy_references_and_claim_tokens, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="payment",
            name="token",
            field=models.CharField(
                blank=True, db_index=True, max_length=255, null=True, verbose_name="token"
            ),
        ),
        migrations.AlterField(
            model_name="payment",
            name="claimed_idx",
            field=models.CharField(blank=True, db_index=True, editable=False, max_length=255),
        ),
        migrations.AlterField(
            model_name="payment",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("verified", "Verified"),
                    ("failed", "Failed"),
                    ("refunded", "Refunded"),
                    ("partially_refunded", "Partially refunded"),
                    ("needs_review", "Needs review"),
                ],
                db_index=True,
                default="pending",
                max_length=32,
                verbose_name="status",
            ),
        ),
    ]
