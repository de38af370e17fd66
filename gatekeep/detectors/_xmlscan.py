"""
Just enough of an XML 1.0 reader for the prologue and first start tag of a document.

A full parser would accept more than a detector should (comments, DTDs, entities
declared in them) and cannot answer "undecided" about a truncated document, which a
detector must. This scanner reads left to right and stops at the first character
that settles the question: it raises :class:`Rejected` as soon as the text can no
longer be well-formed, and :class:`Incomplete` when it runs out of text before
deciding, so that the caller can say NeedMore.

Names are limited to ASCII: stream headers use a handful of fixed ASCII names, and
anything else is refused rather than guessed at.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

__all__ = ["Incomplete", "Rejected", "Scanner", "is_xml_char"]

SPACE = " \t\r\n"
_NAME_START = frozenset(string.ascii_letters + "_:")
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_:-.")
_PREDEFINED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}
# A run of attribute-value characters that need no further thought: not markup,
# not a quote, not whitespace to normalise, and valid XML characters.
_PLAIN_RUN = re.compile("[^\x00-\x1f<&'\"\ud800-\udfff\ufffe\uffff]+")
_DECIMAL = re.compile("[0-9]+")
_HEX = re.compile("[0-9a-fA-F]+")
_DECL_VALUE = re.compile("[A-Za-z0-9._:-]*")
_XML_VERSION = re.compile(r"1\.[0-9]+")


class Incomplete(Exception):
    """The text ends before the question is settled."""


class Rejected(Exception):
    """The text cannot start the document asked for, whatever follows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_xml_char(c: str) -> bool:
    """Whether ``c`` may appear in an XML 1.0 document at all (production [2] Char)."""
    cp = ord(c)
    return (
        c in "\t\n\r"
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


class Scanner:
    """A cursor over the text received so far."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        if self.pos >= len(self.text):
            raise Incomplete()
        return self.text[self.pos]

    def at(self, literal: str) -> bool:
        """Whether ``literal`` comes next; Incomplete if the text ends inside it."""
        rest = self.text[self.pos : self.pos + len(literal)]
        if rest == literal:
            return True
        if literal.startswith(rest):
            raise Incomplete()
        return False

    def expect(self, literal: str, what: str) -> None:
        if not self.at(literal):
            raise Rejected(f"expected {what}")
        self.pos += len(literal)

    def skip_space(self) -> bool:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in SPACE:
            self.pos += 1
        return self.pos > start

    def starts_xml_declaration(self) -> bool:
        """At the very start: an XML declaration (``<?``) or not."""
        return self.at("<?")

    def xml_declaration(self) -> None:
        """``<?xml version=... encoding=... standalone=...?>``, XML 1.x, UTF-8 only."""
        self.expect("<?xml", "an XML declaration")
        if self.peek() not in SPACE:
            raise Rejected("processing instruction (forbidden in XMPP)")
        allowed = ["version", "encoding", "standalone"]
        while True:
            had_space = self.skip_space()
            if self.at("?>"):
                self.pos += 2
                break
            if not had_space:
                raise Rejected("malformed XML declaration")
            key = self.name()
            if key not in allowed:
                raise Rejected("malformed XML declaration")
            if key != "version" and "version" in allowed:
                raise Rejected("XML declaration without version")
            del allowed[: allowed.index(key) + 1]
            self._equals()
            self._declaration_value(key)
        if "version" in allowed:
            raise Rejected("XML declaration without version")

    def _declaration_value(self, key: str) -> None:
        quote = self.peek()
        if quote not in "'\"":
            raise Rejected("unquoted value in the XML declaration")
        self.pos += 1
        found = _DECL_VALUE.match(self.text, self.pos)
        assert found is not None  # the pattern matches the empty string
        value = found.group()
        self.pos = found.end()
        if self.peek() != quote:
            raise Rejected("malformed XML declaration")
        self.pos += 1
        if key == "version" and not _XML_VERSION.fullmatch(value):
            raise Rejected("not XML 1.x")
        if key == "encoding" and value.lower() != "utf-8":
            raise Rejected(f"encoding {value[:20]!r} (XMPP requires UTF-8)")
        if key == "standalone" and value not in ("yes", "no"):
            raise Rejected("malformed XML declaration")

    def expect_start_tag(self) -> None:
        """The ``<`` of an element's start tag; other markup here is final."""
        if self.peek() != "<":
            raise Rejected("does not start with '<'")
        self.pos += 1
        c = self.peek()
        if c == "?":
            raise Rejected("processing instruction (forbidden in XMPP)")
        if c == "!":
            raise Rejected("comment, CDATA or DOCTYPE (forbidden in XMPP)")
        if c == "/":
            raise Rejected("end tag before any element")

    def name(self) -> str:
        """A qualified name (``prefix:local`` or ``local``), ASCII only."""
        start = self.pos
        if self.peek() not in _NAME_START:
            raise Rejected("expected an XML name")
        while self.peek() in _NAME_CHARS:
            self.pos += 1
        name = self.text[start : self.pos]
        prefix, colon, local = name.partition(":")
        if colon and (not prefix or not local or ":" in local or local[0] not in _NAME_START):
            raise Rejected(f"malformed qualified name {name[:40]!r}")
        return name

    def _equals(self) -> None:
        self.skip_space()
        self.expect("=", "'=' after an attribute name")
        self.skip_space()

    def attributes(self) -> Iterator[tuple[str, str]]:
        """Each attribute of the start tag, up to and including its ``>``."""
        while True:
            had_space = self.skip_space()
            c = self.peek()
            if c == ">":
                self.pos += 1
                return
            if c == "/":
                raise Rejected("empty element, not an opening tag")
            if not had_space:
                raise Rejected("malformed start tag")
            key = self.name()
            self._equals()
            yield key, self.attribute_value()

    def attribute_value(self) -> str:
        """A quoted value with references expanded and whitespace normalised."""
        quote = self.peek()
        if quote not in "'\"":
            raise Rejected("unquoted attribute value")
        self.pos += 1
        parts: list[str] = []
        while True:
            run = _PLAIN_RUN.match(self.text, self.pos)
            if run is not None:
                parts.append(run.group())
                self.pos = run.end()
            c = self.peek()
            self.pos += 1
            if c == quote:
                return "".join(parts)
            if c == "&":
                parts.append(self._reference())
            elif c in "\t\n":
                parts.append(" ")
            elif c == "\r":
                # End-of-line handling first turns CR LF into one LF (XML 1.0 §2.11).
                if self.peek() == "\n":
                    self.pos += 1
                parts.append(" ")
            elif c in "'\"":
                parts.append(c)
            elif c == "<":
                raise Rejected("'<' in an attribute value")
            else:
                raise Rejected("character not allowed in XML")

    def _reference(self) -> str:
        """The text of an entity or character reference, after its ``&``."""
        if self.peek() == "#":
            self.pos += 1
            digits, base = (_HEX, 16) if self.peek() == "x" else (_DECIMAL, 10)
            if base == 16:
                self.pos += 1
            found = digits.match(self.text, self.pos)
            if found is None:
                self.peek()
                raise Rejected("malformed character reference")
            self.pos = found.end()
            # Checked before the ';' arrives: more digits can only make it larger.
            number = found.group().lstrip("0") or "0"
            if len(number) > 8 or int(number, base) > 0x10FFFF:
                raise Rejected("character reference out of range")
            self.expect(";", "';' after a character reference")
            c = chr(int(number, base))
            if not is_xml_char(c):
                raise Rejected("character reference to a character not allowed in XML")
            return c
        start = self.pos
        while self.peek() in _NAME_CHARS:
            self.pos += 1
            if not any(known.startswith(self.text[start : self.pos]) for known in _PREDEFINED):
                raise Rejected("undefined entity (no DTD in XMPP)")
        name = self.text[start : self.pos]
        self.expect(";", "';' after an entity reference")
        if name not in _PREDEFINED:
            raise Rejected(f"undefined entity &{name[:20]};")
        return _PREDEFINED[name]
