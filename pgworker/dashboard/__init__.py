"""The web dashboard (``pgworker dashboard``, the ``dashboard`` extra) and the per-minute
job counts its chart reads.

``StatsPlugin`` needs nothing but pgworker: importing this package does not import
Flask; ``pgworker.dashboard.web`` does.
"""

from .stats import MinuteCount, StatsPlugin, StatsStore, stats_schema_name

__all__ = ["MinuteCount", "StatsPlugin", "StatsStore", "stats_schema_name"]
