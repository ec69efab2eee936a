"""Video-MME with subtitles ("w/ subs"): the authors' ``subtitle/<videoID>.srt`` files, and the
subtitle lines at the shown frames' times put before the question.

The convention is lmms-eval's ``videomme_w_subtitle`` task:

- a frame at ``t`` seconds shows the subtitles whose interval holds it (``start <= t < end``;
  lmms-eval compares frame indices, ``int(seconds * fps)``, the same up to rounding);
- each subtitle once, in the file's order, one per line (a subtitle's own lines joined by spaces,
  tags such as ``<font color="white" size=".72c">`` removed; lmms-eval keeps the text inside
  that ``<font>`` tag and drops subtitles without one);
- the prompt is ``This video's subtitles are listed below:``, those lines, then the question;
  a video without a subtitle file gets ``No subtitles available`` as its lines, and one whose
  frames fall between subtitles gets none.

A block with no time in it (a stray line, a blank line inside a cue) is skipped with a warning, as
lmms-eval skips it; a malformed time raises :class:`SubtitleError` naming the file and line, which
the evaluator records as that item's error (counted like an unreadable video) and goes on.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tpo.errors import TPOError

SUBTITLES_INTRO = "This video's subtitles are listed below:"
NO_SUBTITLES = "No subtitles available"

_STAMP = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})$")
_TAG = re.compile(r"<[^>]*>")
_ANY_TIME = re.compile(r"\d+:\d+:\d+")
log = logging.getLogger(__name__)


class SubtitleError(TPOError):
    """A subtitle file that cannot be read as SRT."""


@dataclass(frozen=True)
class Subtitle:
    start: float  # seconds
    end: float
    text: str


def _seconds(stamp: str, where: str) -> float:
    match = _STAMP.match(stamp.strip())
    if not match:
        raise SubtitleError(f"{where}: {stamp.strip()!r} is not a time 'HH:MM:SS,mmm'")
    hours, minutes, seconds, millis = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis.ljust(3, "0")) / 1000


def _blocks(lines: list[str]) -> list[list[tuple[int, str]]]:
    """Runs of non-blank lines, each line with its 1-based number."""
    blocks, current = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            current.append((number, line.strip()))
        elif current:
            blocks.append(current)
            current = []
    return blocks + [current] if current else blocks


def _subtitle(path: Path, block: list[tuple[int, str]]) -> Subtitle | None:
    if not any(_ANY_TIME.search(line) for _, line in block):
        log.warning("%s line %d: skipped a block without a time (%r)", path, block[0][0], block[0][1][:40])
        return None
    if block[0][1].isdigit() and len(block) > 1:  # the cue's index line (optional in practice)
        block = block[1:]
    if "-->" not in block[0][1]:
        number, line = block[0]
        raise SubtitleError(f"{path} line {number}: expected 'HH:MM:SS,mmm --> HH:MM:SS,mmm', got {line!r}")
    number, timing = block[0]
    start, end = timing.split("-->", 1)
    where = f"{path} line {number}"
    end = end.split()[0] if end.split() else ""  # SRT allows position settings after the end time
    text = " ".join(t for t in (_TAG.sub("", line).strip() for _, line in block[1:]) if t)
    return Subtitle(_seconds(start, where), _seconds(end, where), text) if text else None


@lru_cache(maxsize=4096)
def read_srt(path: Path) -> tuple[Subtitle, ...]:
    """The subtitles of an ``.srt`` file (BOM and CRLF tolerated); :class:`SubtitleError` if malformed."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise SubtitleError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return tuple(s for s in (_subtitle(path, block) for block in _blocks(lines)) if s is not None)


def lines_at(subtitles: tuple[Subtitle, ...], times: list[float]) -> list[str]:
    """The text of every subtitle showing at one of ``times``, once each, in the file's order."""
    return [s.text for s in subtitles if any(s.start <= t < s.end for t in times)]


def with_subtitles(prompt: str, srt: Path, times: list[float]) -> str:
    """``prompt`` preceded by the subtitles at ``times`` from ``srt`` (which may not exist)."""
    block = "\n".join(lines_at(read_srt(srt), times)) if srt.is_file() else NO_SUBTITLES
    return f"{SUBTITLES_INTRO}\n{block}\n{prompt}"
