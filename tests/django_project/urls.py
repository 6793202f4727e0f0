"""URLs of the test project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("add", views.enqueue_add),
    path("results/<str:result_id>", views.show_result),
]
