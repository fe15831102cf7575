"""Where reading stands in one source file: the part of the checkpoint that the tail owns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from agent.core.text import display_path


@dataclass(slots=True)
class FileState:
    """Where reading stands in one source file, which is known by identity, not by name."""

    source: str
    path: str
    dev: int
    ino: int
    fingerprint: str  # hex sha256 of the first `fp_len` bytes
    fp_len: int
    offset: int  # bytes consumed: everything before it is stored (or deliberately skipped)
    skipping: bool = False  # inside an over-long line: discard up to the next newline
    seen: int = 0  # the size last seen: after a truncation, what was there but not yet read
    # The key of the file that replaced this one (took its path, or is its truncated original's
    # new content): not read until this one is, as far as its writer got (see sources.py).
    successor: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {
            "source": self.source, "path": self.path, "dev": self.dev, "ino": self.ino,
            "fingerprint": self.fingerprint, "fp_len": self.fp_len, "offset": self.offset,
            "skipping": self.skipping, "seen": self.seen,
            "successor": self.successor,
        }  # fmt: skip
        shown = display_path(self.path)
        if shown is not self.path:
            # Not UTF-8 (`bad\xff.json`): JSON holds text, so the name's bytes go beside it.
            d["path"] = shown
            d["path_bytes"] = os.fsencode(self.path).hex()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileState:
        raw = d.get("path_bytes")
        return cls(
            source=d["source"], path=os.fsdecode(bytes.fromhex(raw)) if raw else d["path"],
            dev=d["dev"], ino=d["ino"], fingerprint=d["fingerprint"], fp_len=d["fp_len"],
            offset=d["offset"], skipping=d.get("skipping", False), seen=d.get("seen", 0),
            successor=d.get("successor", ""),
        )  # fmt: skip
