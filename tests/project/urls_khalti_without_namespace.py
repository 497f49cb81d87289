"""dj-khalti's views included by their urlpatterns alone, without the namespace
``django_khalti`` the widget tag and the ePayment pages reverse (system check W006).
"""

from django.urls import include, path

from django_khalti import urls

urlpatterns = [path("khalti/", include(urls.urlpatterns))]
