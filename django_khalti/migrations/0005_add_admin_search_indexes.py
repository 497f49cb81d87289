from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_khalti", "0004_add_claimed_idx"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="payment",
            index=models.Index(fields=["mobile"], name="khalti_payment_mobile_idx"),
        ),
    ]
