"""An SMTP server for packaging/test-service, run by the packaged Python inside the booted
container: `python auth_sink.py PORT FOLDER PASSWORD`. It accepts a message only after AUTH
with PASSWORD (so a delivery proves the agent read its systemd credential) and saves each
message as FOLDER/N.eml.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


class Saver:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not session.authenticated:
            return "530 5.7.0 Authentication required"
        n = len(list(self.folder.glob("*.eml"))) + 1
        (self.folder / f"{n}.eml").write_bytes(envelope.original_content or b"")
        return "250 OK"


def main(port: int, folder: Path, password: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def authenticator(*args: Any) -> AuthResult:
        data = args[-1]
        return AuthResult(success=isinstance(data, LoginPassword) and data.password == password)

    controller = Controller(
        Saver(folder),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()  # serves from a thread of its own
    threading.Event().wait()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].encode())
