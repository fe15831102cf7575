"""tailmail: tails JSON event logs, selects events with YAML rules, emails a daily report."""

__version__ = "0.1.0"
