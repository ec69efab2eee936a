"""``python -m data_gen merge OUT``: join the ``shard-<i>-of-<n>`` directories inside ``OUT``.

Every shard must be present and made with the same config; records are re-sorted by id, so
the merged files equal those of one unsharded run over the same videos.
"""

from __future__ import annotations

import re
from pathlib import Path

from data_gen.write import OUTPUT_FILES, add_counts, read_jsonl, write_json, write_jsonl
from tpo.errors import ConfigError

_SHARD = re.compile(r"shard-(\d+)-of-(\d+)$")
_SORT_KEY = {"skipped.jsonl": "video"}


def find_shards(output_dir: Path) -> list[Path]:
    shards = sorted(p for p in output_dir.iterdir() if p.is_dir() and _SHARD.match(p.name))
    if not shards:
        raise ConfigError(f"no shard-<i>-of-<n> directories in {output_dir}")
    totals = {int(_SHARD.match(p.name).group(2)) for p in shards}
    if len(totals) > 1:
        raise ConfigError(f"{output_dir} mixes shards of different splits: {sorted(totals)}")
    total = totals.pop()
    present = {int(_SHARD.match(p.name).group(1)) for p in shards}
    missing = sorted(set(range(total)) - present)
    unfinished = [p.name for p in shards if not (p / "manifest.json").exists()]
    if missing or unfinished:
        raise ConfigError(f"cannot merge {output_dir}: shards missing {missing}, unfinished {unfinished}")
    return shards


def merge_shards(output_dir: str | Path) -> dict:
    import json

    output_dir = Path(output_dir)
    shards = find_shards(output_dir)
    manifests = [json.loads((s / "manifest.json").read_text()) for s in shards]
    config = manifests[0]["config"]
    for shard, manifest in zip(shards[1:], manifests[1:]):
        if manifest["config"] != config:
            raise ConfigError(f"{shard.name} was made with a different config than {shards[0].name}")
    for name in OUTPUT_FILES:
        rows = [row for s in shards for row in read_jsonl(s / name)]
        write_jsonl(output_dir / name, rows, _SORT_KEY.get(name, "id"))
    stats, usage = {}, {}
    for shard in shards:
        stats = add_counts(stats, json.loads((shard / "stats.json").read_text()))
    for manifest in manifests:
        usage = add_counts(usage, manifest["token_usage"])
    merged = {**manifests[0], "shard": {"merged_from": [s.name for s in shards]}, "counts": stats,
              "token_usage": usage, "run": {s.name: m["run"] for s, m in zip(shards, manifests)}}
    write_json(output_dir / "stats.json", stats)
    write_json(output_dir / "manifest.json", merged)
    return stats
