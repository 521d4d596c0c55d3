"""Markdown-aware chunking: heading sections, then paragraphs, lines, sentences, words, characters.

Every chunk is an exact slice of the input, `text[char_start:char_end]`, with no leading or
trailing whitespace, so a search hit can be highlighted in the source document. Sizes are in
characters; no tokenizer is involved.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document: `text == source[char_start:char_end]`, under `heading` (a path)."""

    ordinal: int
    text: str
    heading: str | None
    char_start: int
    char_end: int


# Break strengths, strongest first: a chunk prefers to end at the strongest break that still
# leaves it at least half full.
_PARAGRAPH, _LINE, _SENTENCE, _WORD = 3, 2, 1, 0
_STRENGTHS = (_PARAGRAPH, _LINE, _SENTENCE, _WORD)

# Fence and ATX heading lines (CommonMark: at most three spaces of indentation).
_MARKER_LINE = re.compile(
    r"^ {0,3}(?:(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)"
    r"|(?P<hashes>#{1,6})(?=[ \t\r\n]|$)(?P<title>[^\n]*))",
    re.MULTILINE,
)
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")
_NON_SPACE = re.compile(r"\S")
_WORD_START = re.compile(r"(?<=\s)\S")
# Patterns with a literal or one-class first character: the regex engine skips ahead quickly.
_WHITESPACE = re.compile(r"\s+")
_NEWLINE = re.compile(r"\n")
_PARAGRAPH_GAP = re.compile(r"\n[^\S\n]*\n")
_SENTENCE_MARK = re.compile(r"[.!?。！？]")
_SENTENCE_OR_LINE = re.compile(r"[.!?。！？\n]")
_CLOSERS = frozenset("\"')]”’»")


@dataclass(frozen=True, slots=True)
class _Section:
    start: int  # first non-whitespace character
    end: int  # one past the last non-whitespace character
    heading: str | None


def chunk_markdown(text: str, *, max_chars: int = 1500, overlap_chars: int = 200) -> list[Chunk]:
    """Split markdown `text` into chunks of at most `max_chars` characters, in document order.

    Consecutive chunks of one heading section share about `overlap_chars` characters.
    """
    if max_chars < 100:
        raise ValueError(f"max_chars must be at least 100, got {max_chars}")
    if not 0 <= overlap_chars < max_chars / 2:
        raise ValueError(
            f"overlap_chars must be at least 0 and less than half of max_chars"
            f" ({max_chars}), got {overlap_chars}"
        )
    sections, protected = _scan(text, max_chars)
    chunks: list[Chunk] = []
    for section in sections:
        splitter = _SectionSplitter(text, section, max_chars, overlap_chars, protected)
        for start, end in splitter.spans():
            chunks.append(Chunk(len(chunks), text[start:end], section.heading, start, end))
    return chunks


def _scan(text: str, max_chars: int) -> tuple[list[_Section], list[tuple[int, int]]]:
    """Find heading sections and the fenced code blocks that must stay whole."""
    headings: list[tuple[int, int, str]] = []  # (line start, level, title)
    protected: list[tuple[int, int]] = []
    fence = ""
    fence_start = 0
    for match in _MARKER_LINE.finditer(text):
        marker = match["fence"]
        if fence:
            if (
                marker
                and marker[0] == fence[0]
                and len(marker) >= len(fence)
                and not match["info"].strip()
            ):
                if match.end("fence") - fence_start <= max_chars:
                    protected.append((fence_start, match.end("fence")))
                fence = ""
            continue
        if marker:
            # A backtick in the info string makes the line inline code, not a fence.
            if marker[0] == "`" and "`" in match["info"]:
                continue
            fence = marker
            fence_start = match.start("fence")
        else:
            title = _CLOSING_HASHES.sub("", match["title"].strip()).strip()
            headings.append((match.start(), len(match["hashes"]), title))
    if fence:  # an unclosed fence runs to the end of the document
        end = len(text.rstrip())
        if end - fence_start <= max_chars:
            protected.append((fence_start, end))
    return _sections(text, headings), protected


def _sections(text: str, headings: list[tuple[int, int, str]]) -> list[_Section]:
    sections: list[_Section] = []
    bounds = [start for start, _, _ in headings] + [len(text)]
    preamble = _NON_SPACE.search(text, 0, bounds[0])
    if preamble:
        sections.append(_Section(preamble.start(), _content_end(text, 0, bounds[0]), None))
    path: list[tuple[int, str]] = []
    carried: int | None = None
    for index, (start, level, title) in enumerate(headings):
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, title))
        end = bounds[index + 1]
        line_end = text.find("\n", start, end)
        heading_only = line_end == -1 or not text[line_end:end].strip()
        content_start = carried if carried is not None else _first_content(text, start)
        if heading_only and index + 1 < len(headings):
            # A heading with no body of its own joins the next section rather than making a
            # chunk of a few characters.
            carried = content_start
            continue
        carried = None
        name = " > ".join(t for _, t in path if t) or None
        sections.append(_Section(content_start, _content_end(text, start, end), name))
    return sections


def _content_end(text: str, start: int, end: int) -> int:
    return start + len(text[start:end].rstrip())


def _first_content(text: str, start: int) -> int:
    match = _NON_SPACE.search(text, start)
    return match.start() if match else len(text)


class _SectionSplitter:
    """Chooses chunk boundaries inside one section; breaks never fall inside a protected block.

    A break is the end `b` of a chunk's content: `text[b - 1]` is not whitespace and `text[b]`
    starts a whitespace run. Only the window a decision needs is scanned, so the cost stays
    linear in the section's length.
    """

    def __init__(
        self,
        text: str,
        section: _Section,
        max_chars: int,
        overlap_chars: int,
        protected: list[tuple[int, int]],
    ) -> None:
        self.text = text
        self.section = section
        self.max_chars = max_chars
        self.overlap_chars = overlap_chars
        self.protected = protected

    def spans(self) -> list[tuple[int, int]]:
        section, text = self.section, self.text
        if section.end - section.start <= self.max_chars:
            return [(section.start, section.end)]
        spans: list[tuple[int, int]] = []
        start = limit = section.start
        while True:
            end = self._break_after(start, limit)
            if end is None or (end := self._strip_end(start, end)) <= limit:
                # The overlap left no room for the next unbreakable piece: start it afresh.
                start = _first_content(text, limit)
                # From a fresh start a break always exists (see _break_after); the hard cut
                # only keeps the size bound should that reasoning ever be wrong.
                fresh = self._break_after(start, start)
                end = self._strip_end(start, fresh if fresh is not None else start + self.max_chars)
            spans.append((start, end))
            if end >= section.end:
                return spans
            limit = end
            start = self._overlap_start(start, end)

    def _break_after(self, start: int, limit: int) -> int | None:
        """Where a chunk beginning at `start` should end: after `limit`, at most max_chars on."""
        hi = start + self.max_chars
        if hi >= self.section.end:
            return self.section.end
        half_full = max(limit + 1, start + self.max_chars // 2)
        for strength in _STRENGTHS:
            found = self._last_break(strength, half_full, hi)
            if found is not None:
                return found
        found = self._last_break(_WORD, limit + 1, hi)
        if found is not None:
            return found
        # No whitespace at all: cut mid-token, unless that would split a protected block.
        return None if self._inside_protected(hi) else hi

    def _last_break(self, strength: int, lo: int, hi: int) -> int | None:
        """The last break in [lo, hi] whose whitespace run has at least `strength`."""
        text = self.text
        if strength == _SENTENCE:
            # Line and paragraph breaks were looked for first, so only punctuation is left.
            candidates = (
                self._after_sentence_end(m.start())
                for m in _SENTENCE_MARK.finditer(text, max(lo - 2, 0), hi)
            )
        elif strength == _WORD:
            candidates = (m.start() for m in _WHITESPACE.finditer(text, lo, hi + 1))
        else:
            # The newlines that make a run a line or paragraph break may lie after `hi`.
            pattern = _PARAGRAPH_GAP if strength == _PARAGRAPH else _NEWLINE
            candidates = (
                self._run_start(m.start()) for m in pattern.finditer(text, lo, self._run_end(hi))
            )
        best = None
        for candidate in candidates:
            if (
                candidate is not None
                and lo <= candidate <= hi
                and not text[candidate - 1].isspace()
                and not self._inside_protected(candidate)
            ):
                best = candidate
        return best

    def _overlap_start(self, chunk_start: int, chunk_end: int) -> int:
        """Where the next chunk starts: about overlap_chars before `chunk_end`, on a boundary."""
        text = self.text
        if not self.overlap_chars:
            return _first_content(text, chunk_end)
        target = max(chunk_end - self.overlap_chars, chunk_start + 1)
        # Prefer the first sentence (or line) start in the window, unless it leaves too little.
        latest = chunk_end - max(self.overlap_chars // 2, 1)
        scan_from = max(chunk_start, self._run_start(target) - 2)
        for mark in _SENTENCE_OR_LINE.finditer(text, scan_from, latest):
            gap = self._after_sentence_end(mark.start()) if mark[0] != "\n" else mark.start()
            if gap is None:
                continue
            start = self._run_end(gap)
            if start > latest:
                break
            if start >= target and not self._inside_protected(start):
                return start
        position = target
        while word := _WORD_START.search(text, position, chunk_end):
            if not self._inside_protected(word.start()):
                return word.start()
            position = word.end()
        if self._inside_protected(target) or text[target].isspace():
            return _first_content(text, chunk_end)
        return target

    def _after_sentence_end(self, mark: int) -> int | None:
        """The whitespace position just after the sentence-ending punctuation at `mark`, if any."""
        text = self.text
        after = mark + 1
        if after < len(text) and text[after] in _CLOSERS:
            after += 1
        return after if after < len(text) and text[after].isspace() else None

    def _run_start(self, position: int) -> int:
        """The start of the whitespace run holding `position` (`position` itself if not in one)."""
        text, floor = self.text, self.section.start
        while position > floor and text[position - 1].isspace():
            position -= 1
        return position

    def _run_end(self, position: int) -> int:
        """The first non-whitespace position at or after `position`, within the section."""
        match = _NON_SPACE.search(self.text, position, self.section.end)
        return match.start() if match else self.section.end

    def _inside_protected(self, position: int) -> bool:
        index = bisect_right(self.protected, (position, len(self.text) + 1)) - 1
        return index >= 0 and self.protected[index][0] < position < self.protected[index][1]

    def _strip_end(self, start: int, end: int) -> int:
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return end
