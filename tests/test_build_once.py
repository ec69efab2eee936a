"""Built-in assets are built once even when several processes (the ranks of a run) ask at the same time."""

import multiprocessing
import time
from pathlib import Path

from tpo.synthetic import build_once


def _build(tmp: Path) -> None:
    with open(tmp.parent / "builds.log", "a") as log:
        log.write("built\n")
    time.sleep(0.5)  # long enough for the other process to arrive while this one builds
    (tmp / "done.txt").write_text("ok")


def _ask(path: str) -> None:
    assert (build_once(Path(path), _build, "done.txt") / "done.txt").read_text() == "ok"


def test_concurrent_processes_build_once(tmp_path):
    path = tmp_path / "asset"
    procs = [multiprocessing.get_context("spawn").Process(target=_ask, args=(str(path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "builds.log").read_text() == "built\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset", "asset.lock", "builds.log"]
