"""The testproject's URLs, and a views module that connects a receiver on import."""

from django.urls import path

from testproject.urls import urlpatterns as testproject_urlpatterns

from . import late_receiver_views

urlpatterns = [
    *testproject_urlpatterns,
    path("late/thanks/", late_receiver_views.thanks, name="late-thanks"),
]
