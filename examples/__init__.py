"""Runnable examples: each file is a small pgworker application with a ``main()``."""
