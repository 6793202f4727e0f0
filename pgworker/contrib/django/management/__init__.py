"""Django management commands of pgworker.contrib.django."""
