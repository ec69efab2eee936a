"""`kill -9` a running `python -m data_gen run` twice; the resumed run equals an uninterrupted one."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from data_gen.scripted_server import ScriptedServer
from data_gen_support import CONFIG, outputs

CONCURRENCY = 2


def _command(videos, out, server):
    return [sys.executable, "-m", "data_gen", "run", "--config", str(CONFIG), f"videos={videos}",
            f"output_dir={out}", f"api.base_url={server.base_url}", f"api.max_concurrency={CONCURRENCY}",
            "api.timeout_s=5", "--no-progress"]


def _cached(out: Path, stage: str) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'cache.sqlite'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM results WHERE stage=?", (stage,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _kill_when(command, out, stage, count, timeout=120):
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while _cached(out, stage) < count:
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _cached(out, stage)


def test_killed_twice_then_resumed_equals_uninterrupted(reference_run, raw_videos, tmp_path):
    out = tmp_path / "resumed"
    with ScriptedServer(delay_s=0.03) as server:
        command = _command(raw_videos, out, server)
        in_caption = _kill_when(command, out, "caption", 10)
        assert 10 <= in_caption < 64 and not (out / "preferences.jsonl").exists()
        in_postfilter = _kill_when(command, out, "postfilter", 3)
        assert 3 <= in_postfilter < 16 and _cached(out, "caption") == 64
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(out) == outputs(reference_run[0])
    repeated = sum(n - 1 for n in server.served.values())
    print(f"killed at {in_caption} captions and {in_postfilter} verdicts; {repeated} calls repeated")
    assert repeated <= 2 * CONCURRENCY, f"{repeated} paid calls were made twice"
    assert len(server.served) == 64 + 8 + 16 + 16  # every caption, question, judge and SFT_LLM call, once
