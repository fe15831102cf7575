"""The Output protocol: whatever selected lines go to takes part in the one commit.

Report stores are the first kind; alert spools and forwarders are others. The pipeline's hot
loop does not change with the kind: it hands each output the lines selected for it, and its
commit asks every output to make them durable before the checkpoint counts them.
"""

from __future__ import annotations

from typing import Protocol


class Output(Protocol):
    """The contract, in the order the pipeline uses it:

    - `open()`: make the file(s) ready; anything beyond the committed size a run that died left
      is cut (those lines will be read and selected again). May raise; then it is tried again
      at the next commit, and reading waits.
    - `accept(lines)`: take the lines of one read (without their newlines); nothing is written.
    - `write()`: write what was accepted, not yet durable (while catching up, so that memory
      stays bounded by one pump). On error the lines stay accepted, and what was written of
      them is cut before the next attempt.
    - `flush()`: write and make durable; the checkpoint is written only after every output's
      flush returned. Raises the write error (an OSError) when it cannot.
    - `size`: the bytes written, committed with the checkpoint by the pipeline.
    - `notices()`: what the period's report must say about the output ((kind, sentence): a
      "store" problem, a "notice"), each handed over once.
    - `close()`: release the file(s).
    """

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def open(self) -> None: ...

    def accept(self, lines: list[bytes]) -> None: ...

    def write(self) -> None: ...

    def flush(self) -> None: ...

    def notices(self) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...
