"""What a page of docs/ tells a user to do, as steps a test takes literally.

In a section (a heading and what follows it, up to the next heading of the same or a higher
level), each ``sh`` block is a script to run, and each other fenced block whose first line is a
comment naming an absolute path (``# /etc/pnpbroker/forward.toml``) is a file's content, to be
added to that file. Other blocks (examples of output, payloads) are not steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^(#{1,6}) (.*)$")
_PATH = re.compile(r"^(#|//) (/\S+)")


@dataclass(frozen=True)
class Step:
    """A script (``path`` empty) or the content of the file at ``path``."""

    text: str
    path: str = ""


def section(doc: Path, heading: str) -> list[str]:
    """The lines of section ``heading`` of ``doc`` (at any level), headings in code ignored."""
    lines, level, found, fenced = doc.read_text().splitlines(), 0, [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        title = None if fenced else _HEADING.match(line)
        if title and level and len(title[1]) <= level:
            break
        if level:
            found.append(line)
        elif title and title[2].strip() == heading:
            level = len(title[1])
    assert level, f"no section {heading!r} in {doc}"
    return found


def documented_steps(doc: Path, heading: str) -> list[Step]:
    """The steps of section ``heading`` of ``doc``, in order; AssertionError if none."""
    steps, block, language = [], list[str](), None
    for line in section(doc, heading):
        fence = _FENCE.match(line)
        if fence and language is None:
            language, block = fence[1], []
        elif fence:
            if language == "sh":
                steps.append(Step("\n".join(block) + "\n"))
            elif block and (named := _PATH.match(block[0])):
                steps.append(Step("\n".join(block) + "\n", named[2]))
            language = None
        elif language is not None:
            block.append(line)
    assert steps, f"no steps under {heading!r} in {doc}"
    return steps


def documented_file(doc: Path, heading: str, path: str) -> str:
    """The content the docs give the file ``path`` in section ``heading``."""
    [text] = [s.text for s in documented_steps(doc, heading) if s.path == path]
    return text
