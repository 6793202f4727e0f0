"""The fault harness (``make faults``, ``python -m faults``): pgworker on a private
PostgreSQL cluster through crashes, outages and overload, counted from a ledger table."""
