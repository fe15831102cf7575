"""Shared fixtures: real SMTP servers on loopback (see smtp_sink.py)."""

from smtp_sink import ca, ca_file, closed_port, silent_port, smtp_server

__all__ = ["ca", "ca_file", "closed_port", "silent_port", "smtp_server"]
