"""What data_gen's stages hand each other, and the ids that name items in the cache, failures.jsonl and
the records.

    Segment (manipulate) --captions--> Question --two answers--> Pair --post-filter--> record

Ids are readable paths: ``<video>::<kind>-<k>`` a segment, ``<segment>::q<j>`` a question (and the
record made from it), ``<question>::chosen|rejected`` an answer, ``<video>@<frame>`` a captioned frame.
"""

from __future__ import annotations

from dataclasses import dataclass

SIDES = ("chosen", "rejected")


def segment_id(video: str, kind: str, k: int) -> str:
    return f"{video}::{kind}-{k:02d}"


def question_id(segment: str, j: int) -> str:
    return f"{segment}::q{j:02d}"


def answer_id(question: str, side: str) -> str:
    return f"{question}::{side}"


def frame_id(video: str, frame: int) -> str:
    return f"{video}@{frame}"


@dataclass(frozen=True)
class Segment:
    id: str  # segment_id(video, kind, k)
    video: str  # relative path
    kind: str  # irrelevant | incomplete
    frame_indices: tuple[int, ...]  # all sampled frames
    chosen_frames: tuple[int, ...]  # S_a
    rejected_frames: tuple[int, ...]  # S_b


@dataclass(frozen=True)
class Question:
    """A question the LLM wrote about a segment's ``S_a`` captions."""

    id: str  # question_id(segment.id, j)
    segment: Segment
    type: str
    text: str


@dataclass(frozen=True)
class Pair:
    """A question's two answers (on ``S_a`` and on ``S_b``), with what the judge reads."""

    question: Question
    chosen: str
    rejected: str
    chosen_truncated: bool
    rejected_truncated: bool
    captions: tuple[dict, ...]  # {"frame", "text"} of each S_a frame
    captions_text: str  # those captions as the LLM and the judge read them

    @property
    def id(self) -> str:
        return self.question.id

    @property
    def any_truncated(self) -> bool:
        return self.chosen_truncated or self.rejected_truncated
