"""Integrations of pgworker with frameworks, each an optional extra (``pgworker[django]``)."""
