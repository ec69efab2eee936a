"""`tpo data import --format tpo-official`: the TPO authors' released data (ruili0/LongVA-TPO-10k) as our records."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_gen.__main__ import main as data_main
from data_gen.import_tpo_official import authors_frame_indices, import_tpo_official
from tpo.data.records import read_records
from tpo.synthetic.world import write_video

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "tpo_official" / "dataset.csv"


def _frames(count: int, size: int = 32) -> np.ndarray:
    """``count`` frames whose brightness climbs, so every frame differs."""
    levels = np.linspace(16, 240, count).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 3)).copy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """The fixture's videos: 40 frames at 8 fps (stride branch), 80 at 2 fps (linspace branch), a broken file."""
    root = tmp_path_factory.mktemp("tpo_official_videos")
    (root / "clips").mkdir()
    write_video(root / "clips" / "stride.mp4", _frames(40), fps=8)
    write_video(root / "long.mp4", _frames(80), fps=2)
    (root / "broken.mp4").write_bytes(b"this is not a video" * 100)
    return root


def _authors_rule(total_frame_num, fps, video_fps, frames_upbound):
    """train_dpo.py's DPODataset._get_item (ruili33/TPO@6c43c58), with decord's len(vr) and get_avg_fps()."""
    avg_fps = round(fps / video_fps)
    frame_idx = [i for i in range(0, total_frame_num, avg_fps)]
    if frames_upbound > 0:
        if len(frame_idx) > frames_upbound:
            uniform_sampled_frames = np.linspace(0, total_frame_num - 1, frames_upbound, dtype=int)
            frame_idx = uniform_sampled_frames.tolist()
    return frame_idx


@pytest.mark.parametrize("total, fps, video_fps, upbound", [
    (40, 8.0, 1, 32), (80, 2.0, 1, 32), (5400, 29.97, 1, 32), (10, 2.5, 1, 32), (10, 3.5, 1, 32),
    (300, 30.0, 2, 32), (300, 30.0, 1, 0), (31, 1.0, 1, 32), (33, 1.0, 1, 32), (7, 24.0, 1, 32),
])
def test_frame_rule_is_the_authors(total, fps, video_fps, upbound):
    assert authors_frame_indices(total, fps, video_fps, upbound) == _authors_rule(total, fps, video_fps, upbound)


def test_frame_rule_refuses_what_the_authors_loader_cannot_sample():
    with pytest.raises(ValueError, match="step"):
        authors_frame_indices(100, 0.4)  # round(0.4) == 0: range() would refuse a step of 0
    with pytest.raises(ValueError, match="no frame rate"):
        authors_frame_indices(100, 0.0)


def test_imports_the_authors_layout(videos, tmp_path, capsys):
    out = tmp_path / "out"
    status = data_main(["import", "--format", "tpo-official", "--input", str(FIXTURE), "--videos", str(videos),
                        "--output", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.strip() == (f"imported 3 of 5 rows into {out} (2 skipped: video not found 1, video unreadable 1; "
                               "see skipped.jsonl)")
    records, bad = read_records(out / "preferences.jsonl")  # video_root from the manifest, every video checked
    assert not bad and [r.id for r in records] == ["tpo-official-0000001", "tpo-official-0000002",
                                                   "tpo-official-0000005"]
    first, second, fifth = records
    # stride branch: 40 frames at 8 fps, video_fps 1 -> every 8th frame (5 <= 32)
    assert first.video == "clips/stride.mp4" and first.frame_indices == [0, 8, 16, 24, 32]
    # linspace branch: 80 frames at 2 fps -> 40 by stride > 32 -> np.linspace(0, 79, 32, dtype=int)
    assert second.frame_indices == np.linspace(0, 79, 32, dtype=int).tolist()
    assert first.chosen_frames == first.rejected_frames == first.frame_indices and first.manipulation is None
    assert first.question == "What does the red square do first?"  # <image> removed, as the loader does
    assert second.question == "What colour is the shape at the end?"
    assert second.chosen == "It is blue.\nIt stays blue until the end." and second.rejected == "It is red."
    assert first.extra == {"answer": "It moves right."}
    assert fifth.question == "What is shown after the square stops?"
    assert first.provenance == {"imported_from": "tpo-official", "source": str(FIXTURE), "line": 2, "row": 1}

    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["line"], s["row"], s["kind"]) for s in skipped] == [(6, 3, "video not found"),
                                                                   (8, 4, "video unreadable")]
    assert skipped[0]["reason"] == f"video not found: {videos / 'missing.mp4'}"
    assert skipped[1]["reason"].startswith(f"video unreadable: {videos / 'broken.mp4'}: ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["video_root"] == str(videos.resolve()) and manifest["schema_version"] == 1
    assert manifest["imported_from"] == {"format": "tpo-official", "file": str(FIXTURE.resolve())}
    assert manifest["ignored_columns"] == [""]  # pandas' index column
    assert manifest["frames"]["records_by_frame_count"] == {"5": 2, "32": 1}
    assert manifest["frames"]["video_fps"] == 1 and manifest["frames"]["frames_upbound"] == 32
    stats = json.loads((out / "stats.json").read_text())
    assert stats == {"lines": 5, "records": {"written": 3}, "skipped": 2,
                     "skipped_by_kind": {"video not found": 1, "video unreadable": 1}}


def test_video_fps_and_frames_upbound_are_the_loaders_options(videos, tmp_path):
    out = tmp_path / "out"
    import_tpo_official(FIXTURE, videos, out, video_fps=2, frames_upbound=4)
    records, bad = read_records(out / "preferences.jsonl")
    by_video = {r.video: r.frame_indices for r in records}
    assert not bad
    assert by_video["clips/stride.mp4"] == np.linspace(0, 39, 4, dtype=int).tolist()  # 10 by stride 4 > 4
    assert by_video["long.mp4"] == np.linspace(0, 79, 4, dtype=int).tolist()
    import_tpo_official(FIXTURE, videos, out, frames_upbound=0)  # the loader's own default: no bound
    records, _ = read_records(out / "preferences.jsonl")
    assert {r.video: r.frame_indices for r in records}["long.mp4"] == list(range(0, 80, 2))


def test_renamed_columns_via_columns(videos, tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    rows = [{"uid": "a1", "question": "<image>\nWhat moves?", "gt": "A square.", "pos": "The square.",
             "neg": "The circle.", "clip": "clips/stride.mp4"},
            {"uid": "a2", "question": "Colour?", "gt": "Blue.", "pos": "Blue.", "neg": "Red.", "clip": "long.mp4"},
            {"uid": "a1", "question": "Again?", "gt": "x", "pos": "y", "neg": "z", "clip": "long.mp4"},
            {"uid": "a4", "question": "No answer?", "gt": "x", "neg": "z", "clip": "long.mp4"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    status = data_main(["import", "--format", "tpo-official", "--input", str(source), "--videos", str(videos),
                        "--output", str(out), "--columns",
                        "prompt=question,chosen=pos,rejected=neg,video=clip,answer=gt,id=uid"])
    assert status == 0 and "imported 2 of 4 rows" in capsys.readouterr().out
    records, bad = read_records(out / "preferences.jsonl")
    assert not bad and [(r.id, r.question, r.chosen, r.rejected) for r in records] == [
        ("a1", "What moves?", "The square.", "The circle."), ("a2", "Colour?", "Blue.", "Red.")]
    assert records[0].extra == {"answer": "A square."}
    skipped = {s["row"]: s for s in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    assert skipped[3]["reason"] == "duplicate id 'a1'" and skipped[4]["kind"] == "bad row"
    assert "'pos'" in skipped[4]["reason"]


def test_a_file_without_answer_imports(videos, tmp_path):
    source = tmp_path / "pairs.json"
    source.write_text(json.dumps([{"prompt": "What moves?", "chosen": "A square.", "rejected": "A circle.",
                                   "video": "clips/stride.mp4"}]))
    stats = import_tpo_official(source, videos, tmp_path / "out")
    records, _ = read_records(tmp_path / "out" / "preferences.jsonl")
    assert stats["records"]["written"] == 1 and records[0].extra == {}


def test_a_bad_header_is_one_line_naming_found_and_needed_columns(videos, tmp_path):
    source = tmp_path / "dataset.csv"
    source.write_text("question,good,bad,video\nWhat?,a,b,long.mp4\n")
    done = subprocess.run([sys.executable, "-m", "data_gen", "import", "--format", "tpo-official", "--input",
                           str(source), "--videos", str(videos), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"error: {source}: the header has columns ['question', 'good', 'bad', 'video'], but tpo-official needs "
        "prompt, chosen, rejected, video (missing: prompt, chosen, rejected); if the file names them otherwise, "
        "map them with --columns key=column,... (e.g. --columns chosen=preferred)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--columns", "chosen=winner"], "missing: chosen (as 'winner')"),
    (["--columns", "answr=gt"], "--columns: unknown key 'answr'; the keys are prompt, chosen, rejected, video, "
                                "answer, id"),
    (["--columns", "chosen"], "each item is key=column"),
    (["--num-frames", "8"], "--format tpo-official samples frames by the authors' rule"),
    (["--frames-upbound", "-1"], "--frames-upbound -1: must be >= 0"),
    (["--video-fps", "0"], "--video-fps 0: must be > 0"),
])
def test_option_mistakes_are_one_error_line(videos, tmp_path, capsys, extra, message):
    status = data_main(["import", "--format", "tpo-official", "--input", str(FIXTURE), "--videos", str(videos),
                        "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_authors_options_are_refused_for_other_formats(videos, tmp_path, capsys):
    status = data_main(["import", "--format", "llava-hound", "--input", str(FIXTURE), "--videos", str(videos),
                        "--output", str(tmp_path / "out"), "--frames-upbound", "8"])
    assert status == 2 and "--frames-upbound: only for --format tpo-official" in capsys.readouterr().err


def test_tpo_fit_trains_on_the_imported_file(videos, tmp_path, capsys):
    """``tpo fit --data.path OUT/preferences.jsonl``, one step (the release has no manipulation labels, so
    ``--data.irrelevant_fraction null``)."""
    import torch

    from tpo.cli import main

    out = tmp_path / "out"
    import_tpo_official(FIXTURE, videos, out)
    main(["fit", "--config", str(REPO / "lightning_configs" / "demo.yaml"), "--trainer.default_root_dir",
          str(tmp_path / "run"), "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
          "--data.path", str(out / "preferences.jsonl"), "--data.irrelevant_fraction", "null",
          "--data.val_fraction", "0", "--data.batch_size", "2"])
    assert "TPO fit done" in capsys.readouterr().out
    ckpt = torch.load(next((tmp_path / "run").rglob("checkpoints/*.ckpt")), weights_only=False, mmap=True)
    assert ckpt["global_step"] == 1
