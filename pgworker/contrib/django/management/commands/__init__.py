"""``manage.py pgworker``."""
