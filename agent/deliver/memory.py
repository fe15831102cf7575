"""A transport that never leaves the process: `handler(message)` plays the server. The test
double of the `Transport` contract, as httpx's `MockTransport(handler)` is of its transports: the
Sender's retry logic is tested with it in milliseconds; real servers test the real transports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.deliver.transport import DeliveryResult, OnAccepted, Outgoing

Handler = Callable[[Outgoing], DeliveryResult | Awaitable[DeliveryResult]]


def accept_all(message: Outgoing) -> DeliveryResult:
    """A server that takes everything."""
    return DeliveryResult(message.recipients, reply=(250, "accepted"))


class MemoryTransport:
    """Answers each send with `handler(message)`, which returns the `DeliveryResult` (or an
    awaitable of it, to take its time) or raises a `DeliveryFailure`, as a server would.

    After `on_accepted`, `goodbye()` is awaited when given: the server's slow or failing QUIT,
    during which a test cancels or crashes the sender. `sent` lists every message given to
    `send`, accepted or not, in order.
    """

    def __init__(
        self,
        handler: Handler = accept_all,
        *,
        name: str = "memory",
        where: Mapping[str, Any] | None = None,
        goodbye: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.handler = handler
        self.name = name
        self.where: Mapping[str, Any] = where if where is not None else {}
        self.goodbye = goodbye
        self.sent: list[Outgoing] = []

    async def send(self, message: Outgoing, on_accepted: OnAccepted) -> DeliveryResult:
        self.sent.append(message)
        answer = self.handler(message)
        result = answer if isinstance(answer, DeliveryResult) else await answer
        if not result.accepted:
            # The contract: nobody has it, so it is a failure, which says whether to retry.
            raise ValueError("a handler that delivers to nobody raises a DeliveryFailure")
        on_accepted(result)
        if self.goodbye is not None:
            await self.goodbye()
        return result
