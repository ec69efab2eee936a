"""The on-disk result cache that makes a run resumable.

Every stage stores each item's outcome under a key that hashes the stage's settings *and the
item's inputs* (see ``config.fingerprint``). A killed run loses at most the calls in flight;
a rerun finds everything else here and makes no paid call twice. Changing a stage's settings
changes its keys, so that stage reruns, and so does every later stage whose inputs changed.
Keys name the *model*, not the endpoint: moving a server to another host or port keeps the cache.

SQLite gives atomic commits, so a ``kill -9`` never leaves a half-written entry.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Outcome:
    """What one model call (or local computation) produced for one item."""

    ok: bool
    value: object = None  # the parsed result when ok
    reason: str = ""  # why it failed when not ok
    usage: dict = field(default_factory=dict)  # prompt_tokens / completion_tokens

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "value": self.value, "reason": self.reason, "usage": self.usage})

    @classmethod
    def from_json(cls, text: str) -> "Outcome":
        return cls(**json.loads(text))


class ResultCache:
    """``(stage, key) -> Outcome`` in ``<output_dir>/cache.sqlite``."""

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)  # autocommit: one entry, one commit
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (stage TEXT, key TEXT, value TEXT, PRIMARY KEY (stage, key))")

    def get(self, stage: str, key: str) -> Outcome | None:
        row = self.db.execute("SELECT value FROM results WHERE stage=? AND key=?", (stage, key)).fetchone()
        return Outcome.from_json(row[0]) if row else None

    def put(self, stage: str, key: str, outcome: Outcome) -> None:
        self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", (stage, key, outcome.to_json()))

    def count(self, stage: str | None = None) -> int:
        if stage is None:
            return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM results WHERE stage=?", (stage,)).fetchone()[0]

    def close(self) -> None:
        self.db.close()
