"""Read a report email back as a mail client shows it: parts, attachment, the HTML's visible text."""

from __future__ import annotations

import email
import email.policy
import gzip
import re
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def bodies(msg: EmailMessage) -> tuple[str, str]:
    """(plain text, HTML), with line ends as a mail client shows them."""
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return _lines(text), _lines(html)


def _lines(part: Any) -> str:
    # get_content() keeps the wire's CRLF
    return str(part.get_content()).replace("\r\n", "\n")


def attachments(msg: EmailMessage) -> list[Any]:
    return list(msg.iter_attachments())


def attached_content(msg: EmailMessage) -> bytes:
    """The one attachment's bytes, gunzipped if it is compressed."""
    [part] = attachments(msg)
    data = part.get_content()
    assert isinstance(data, bytes)
    return gzip.decompress(data) if part.get_content_type() == "application/gzip" else data


class _Cells(HTMLParser):
    """The visible texts of an HTML document, one per element that holds text directly."""

    BLOCKS = frozenset({"td", "th", "p", "div", "li", "h1", "h2", "br", "tr", "table"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self._current: list[str] = []
        self._hidden = 0

    def _flush(self) -> None:
        text = " ".join("".join(self._current).replace("\xa0", " ").split())
        if text:
            self.cells.append(text)
        self._current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("title", "head", "style", "script"):
            self._hidden += 1
        if tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("title", "head", "style", "script"):
            self._hidden -= 1
        if tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._current.append(data)


def cells(html: str) -> list[str]:
    """The HTML's visible text as a reader sees it, cell by cell (table cells, paragraphs)."""
    parser = _Cells()
    parser.feed(html)
    parser.close()
    parser._flush()
    return parser.cells


def follows(sequence: list[str], *items: str) -> bool:
    """Whether `items` occur one right after the other somewhere in `sequence`."""
    n = len(items)
    return any(tuple(sequence[i : i + n]) == items for i in range(len(sequence) - n + 1))


def hour_columns(html: str) -> list[tuple[str, str, str]]:
    """The HTML hour chart's columns: (local hour "YYYY-MM-DDTHH", exact count, count shown
    above the column); a local hour that happens twice has two columns, the second counting ""."""
    keys = re.findall(r'<td data-hour="([^"]+)" data-count="([\d,]*)"', html)
    chart = html[html.index("Selected per hour") :]
    first_row = chart[: chart.index("</tr>")]
    shown = [re.sub(r"<[^>]*>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", first_row)]
    assert len(shown) == len(keys), (shown, keys)
    return [(hour, count, label) for (hour, count), label in zip(keys, shown, strict=True)]
