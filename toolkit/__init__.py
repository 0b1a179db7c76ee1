"""keyshift: move a live trading database on PostgreSQL to a new data model without downtime."""

__version__ = "0.1.0"
