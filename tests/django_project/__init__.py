"""A small Django project for tests/test_django.py: settings, a view that enqueues, tasks."""
