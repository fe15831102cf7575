"""The errors tailmail raises on purpose: one family, each kind also the built-in kind it is.

As aiosmtplib's `SMTPServerDisconnected(SMTPException, ConnectionError)` is both, a write error
here is a `TailmailError` and an `OSError`: code that knows the family catches it by name, code
that does not still sees the kind it expects. The message is the sentence the operator reads;
advice about what to do is kept apart from the exception where it depends on who asks.
"""

from __future__ import annotations


class TailmailError(Exception):
    """Base of every error tailmail raises on purpose."""


class ConfigError(TailmailError, ValueError):
    """What the operator wrote cannot be used (exit 2)."""


class StateDamaged(TailmailError):
    """The agent's state cannot be used; the message says which file and what to do (exit 2)."""


class WriteError(TailmailError, OSError):
    """A file of the agent's cannot be written now (disk full, I/O error, permissions): what was
    read stays pending, nothing is committed past what is on disk, and the write is retried."""


def write_error(exc: OSError) -> WriteError:
    """An OSError met while writing, as the WriteError it is (its errno, text and file kept)."""
    if isinstance(exc, WriteError):
        return exc
    error = WriteError(exc.errno, exc.strerror, exc.filename) if exc.errno else WriteError(str(exc))
    error.__cause__ = exc
    return error


class UnsafeFile(WriteError, PermissionError):
    """A file the agent would write is not its own to write: refused, nothing written."""


class DeliveryError(TailmailError):
    """A message was not delivered; `transient` says whether trying again later may help."""

    transient: bool = True


class BuildError(TailmailError):
    """A message could not be built (a report, an alert): retried, never lost."""
