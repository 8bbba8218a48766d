"""SSML documents as announcements carry them: checked safely, and their spoken words.

An SSML payload comes from outside, so it is parsed with every XML feature that can make a
small document large or reach outside it refused: no DOCTYPE (and so no entity declarations,
internal or external), no processing instructions. What remains is elements, attributes, text
and the five predefined entities, whose expansion cannot multiply anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BadAnnouncement

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element


class _Refused(Exception):
    pass


def _refuse(what: str):  # type: ignore[no-untyped-def]
    def handler(*_: object) -> None:
        raise _Refused(what)

    return handler


def parse_ssml(document: str) -> Element:
    """The document's root element; BadAnnouncement if it is not well-formed XML, declares a
    DOCTYPE or an entity, or its root is not <speak>."""
    # The XML parser is loaded by the first SSML announcement, not by every daemon.
    from xml.etree import ElementTree
    from xml.parsers import expat

    text = document.strip()
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = _refuse("a DOCTYPE")
    guard.EntityDeclHandler = _refuse("an entity declaration")
    guard.ProcessingInstructionHandler = _refuse("a processing instruction")
    guard.ExternalEntityRefHandler = _refuse("an external entity")
    try:
        guard.Parse(text, True)
    except _Refused as exc:
        raise BadAnnouncement(
            f"'ssml' may not contain {exc} (entities and DTDs are refused)"
        ) from None
    except expat.ExpatError as exc:
        raise BadAnnouncement(
            f"'ssml' is not well-formed XML: "
            f"{expat.ErrorString(exc.code)}: line {exc.lineno}, "
            f"column {exc.offset}"
        ) from None
    root = ElementTree.fromstring(text)  # the guard accepted it: only plain XML remains
    if root.tag != "speak":
        raise BadAnnouncement(f"'ssml' must be one <speak> element (got <{str(root.tag)[:20]}>)")
    return root


def check_ssml(document: str) -> str:
    """Check an SSML document (see parse_ssml); returns the words it says."""
    return _words(parse_ssml(document))


def ssml_text(document: str) -> str:
    """What an SSML document says, without its markup: for voices that take plain text. The
    document was checked when the announcement was accepted."""
    try:
        words = _words(parse_ssml(document))
    except BadAnnouncement:
        return document
    return words or document


def _words(root: Element) -> str:
    return " ".join("".join(root.itertext()).split())
