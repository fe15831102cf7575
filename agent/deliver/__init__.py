"""Messages on disk until a server has taken them, and the ways they travel.

`Outbox` (the queue on disk) and `Sender` (when to try, what an outcome does to the queue) know
no protocol: each message goes through the `Transport` of its kind, whose docstring is the
contract. `SmtpTransport` sends mail, `MemoryTransport` stands in for a server in tests, and
`test_email` is the SMTP doctor of `tailmail test-email`.

The SMTP names are imported at their first use: aiosmtplib and email are not loaded to start
the service, only to deliver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent.deliver.memory import MemoryTransport, accept_all
from agent.deliver.outbox import Outbox, OutboxEntry
from agent.deliver.sender import Policy, Sender
from agent.deliver.transport import (
    ConnectionFailure,
    DeliveryFailure,
    DeliveryResult,
    LazyTransport,
    OnAccepted,
    Outgoing,
    PermanentFailure,
    TransientFailure,
    Transport,
    raise_if_cancelled,
)

if TYPE_CHECKING:
    from agent.deliver.doctor import attachment_within, report_size, test_email
    from agent.deliver.smtp import (
        SmtpConnectionFailure,
        SmtpFailure,
        SmtpPermanentFailure,
        SmtpTransientFailure,
        SmtpTransport,
        tls_context,
    )

__all__ = [
    "ConnectionFailure",
    "DeliveryFailure",
    "DeliveryResult",
    "LazyTransport",
    "MemoryTransport",
    "OnAccepted",
    "Outbox",
    "OutboxEntry",
    "Outgoing",
    "PermanentFailure",
    "Policy",
    "Sender",
    "SmtpConnectionFailure",
    "SmtpFailure",
    "SmtpPermanentFailure",
    "SmtpTransientFailure",
    "SmtpTransport",
    "TransientFailure",
    "Transport",
    "accept_all",
    "attachment_within",
    "raise_if_cancelled",
    "report_size",
    "test_email",
    "tls_context",
]

_LAZY = {
    "SmtpConnectionFailure": "agent.deliver.smtp",
    "SmtpFailure": "agent.deliver.smtp",
    "SmtpPermanentFailure": "agent.deliver.smtp",
    "SmtpTransientFailure": "agent.deliver.smtp",
    "SmtpTransport": "agent.deliver.smtp",
    "tls_context": "agent.deliver.smtp",
    "attachment_within": "agent.deliver.doctor",
    "report_size": "agent.deliver.doctor",
    "test_email": "agent.deliver.doctor",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
