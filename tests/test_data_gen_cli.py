"""`python -m data_gen` commands: importers, dry run, clear errors."""

import json
import subprocess
import sys

import pytest

from data_gen.importers import import_file
from tpo.data.records import read_records

from data_gen_support import CONFIG, unreachable


def _dg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "data_gen", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _lines(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_import_llava_hound(raw_videos, tmp_path):
    source = tmp_path / "hound.jsonl"
    source.write_text(_lines([
        {"id": "h1", "video": "clip_0000", "prompt": "What happens?", "answer": "x",
         "chosen": "A red square moves.", "rejected": "Nothing.", "chosen_score": 5, "rejected_score": 1},
        {"id": "h2", "video": "clip_0001.mp4", "prompt": "Colour?", "chosen": "Blue.", "rejected": "Red."},
        {"id": "h3", "video": "missing_clip", "prompt": "?", "chosen": "a", "rejected": "b"},
        "{not json",
        {"id": "h1", "video": "clip_0002.mp4", "prompt": "Again?", "chosen": "c", "rejected": "d"},
        {"id": "h5", "video": "clip_0002.mp4", "prompt": "", "chosen": "c", "rejected": "d"},
    ]))
    written, skipped = import_file("llava-hound", source, raw_videos, tmp_path / "out", num_frames=8)
    assert (written, skipped) == (2, 4)
    records, bad = read_records(tmp_path / "out" / "preferences.jsonl")  # video_root from the manifest
    assert not bad and [r.id for r in records] == ["h1", "h2"]
    assert records[0].video == "clip_0000.mp4" and len(records[0].frame_indices) == 8
    assert records[0].question == "What happens?" and records[0].manipulation is None
    reasons = {s["line"]: s["reason"] for s in map(json.loads, (tmp_path / "out/skipped.jsonl").read_text().splitlines())}
    assert reasons[3].startswith("video not found") and reasons[4].startswith("not valid JSON")
    assert reasons[5] == "duplicate id 'h1'" and reasons[6].startswith("empty prompt")


def test_import_trl_conversational_and_plain(raw_videos, tmp_path):
    source = tmp_path / "trl.json"
    source.write_text(json.dumps([
        {"prompt": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "The red square."}]}],
         "rejected": [{"role": "assistant", "content": "The blue circle."}], "videos": ["clip_0003.mp4"]},
        {"prompt": "Plain question?", "chosen": "yes", "rejected": "no", "videos": ["clip_0000.mp4"]},
        {"prompt": "No video?", "chosen": "yes", "rejected": "no"},
    ]))
    written, skipped = import_file("trl", source, raw_videos, tmp_path / "out", num_frames=4)
    records, bad = read_records(tmp_path / "out" / "preferences.jsonl")
    assert (written, skipped) == (2, 1) and not bad
    first = next(r for r in records if r.video == "clip_0003.mp4")
    assert (first.question, first.chosen, first.rejected) == ("What moves?", "The red square.", "The blue circle.")


def test_cli_dry_run_and_import(raw_videos, tmp_path, scripted_server):
    done = _dg("run", "--config", CONFIG, f"videos={raw_videos}", f"output_dir={tmp_path / 'out'}",
               f"api.base_url={scripted_server.base_url}", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    assert plan["caption"]["calls_to_make"] == 64 and sum(scripted_server.served.values()) == 0
    flags = _dg("run", "--config", CONFIG, "--videos", raw_videos, f"--output_dir={tmp_path / 'out'}",
                "--api.base_url", scripted_server.base_url, "--dry-run")  # tpo fit's grammar
    assert flags.returncode == 0, flags.stderr[-2000:]
    assert json.loads(flags.stdout) == plan
    source = tmp_path / "pairs.jsonl"
    source.write_text(_lines([{"prompt": "Q?", "chosen": "a", "rejected": "b", "videos": ["clip_0000.mp4"]}]))
    done = _dg("import", "--format", "trl", "--input", source, "--videos", raw_videos, "--output", tmp_path / "imp")
    assert done.returncode == 0 and "imported 1 records" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["run", "--config", CONFIG, "output_dir=o"], "required: videos"),
    (["run", "--config", CONFIG, "videos=/no/such/dir", "output_dir=o"], "videos folder not found"),
    (["merge", "."], "no shard-<i>-of-<n> directories"),
    (["run", "--config", CONFIG, "--videos"], "--videos needs a value"),
])
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    done = _dg(*args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_cli_refuses_the_openai_endpoint_without_a_key(raw_videos, tmp_path):
    env_free = ["api.base_url=null", "api.api_key_env=TPO_TEST_NO_SUCH_KEY"]
    done = _dg("run", "--config", CONFIG, f"videos={raw_videos}", f"output_dir={tmp_path}", *env_free, "--no-progress")
    assert done.returncode == 2 and "TPO_TEST_NO_SUCH_KEY is not set" in done.stderr


def test_cli_stops_with_one_line_when_nothing_listens_at_the_endpoint(raw_videos, tmp_path):
    url = unreachable().base_url
    done = _dg("run", "--config", CONFIG, f"videos={raw_videos}", f"output_dir={tmp_path}", f"api.base_url={url}",
               "--no-progress")
    assert done.returncode == 2, done.stdout[-2000:]
    assert done.stderr.splitlines() == [f"error: the caption stage's endpoint {url} cannot be reached (connection "
                                        "refused); start the server or set api.base_url (or caption.base_url)"]
    assert not (tmp_path / "preferences.jsonl").exists()
