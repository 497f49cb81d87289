# settings.py, with app.config_from_object("django.conf:settings", namespace="CELERY")
# in your celery.py (or, without the namespace: app.conf.beat_schedule = {...}).
from datetime import timedelta

CELERY_BEAT_SCHEDULE = {
    "khalti-reconcile": {
        "task": "shop.tasks.reconcile_khalti_payments",
        "schedule": timedelta(minutes=5),
        # A run still queued when the next one is due is dropped, not piled up.
        "options": {"expires": 4 * 60},
    },
}
