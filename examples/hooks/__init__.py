"""The hooks example: run it with ``python -m examples.hooks``."""
