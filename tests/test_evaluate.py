"""Evaluation: benchmark loaders on fixtures in the authors' formats, answer parsing, scoring, NIAH."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tpo.data.frames import read_frames
from tpo.evaluate.answers import extract_choice, mcq_prompt
from tpo.evaluate.benchmarks import MCQItem, load_benchmark
from tpo.evaluate.mcq import evaluate, read_predictions
from tpo.evaluate.niah import make_niah, niah_grid, niah_table, plot_heatmap, render_needle

OPTIONS = ["a red square", "a blue circle", "red", "nothing happens"]


def test_videomme_parquet_and_json(tmp_path):
    rows = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
             "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id": "001-1",
             "task_type": "Counting Problem", "question": "How many red socks are above the fireplace?",
             "options": ["A. 0.", "B. 1.", "C. 2.", "D. 3."], "answer": "C"},
            {"video_id": "002", "duration": "long", "domain": "Sports", "sub_category": "Football", "url": "",
             "videoID": "xYz", "question_id": "002-1", "task_type": "Temporal Reasoning",
             "question": "What happens first?", "options": ["A. kick-off", "B. goal", "C. foul", "D. corner"],
             "answer": "E"}]
    (tmp_path / "videomme").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videomme" / "test-00000-of-00001.parquet")
    loaded = load_benchmark("videomme", tmp_path / "videomme" / "test-00000-of-00001.parquet", tmp_path / "data")
    item = loaded.items[0]
    assert (item.id, item.options, item.answer, item.category, item.duration) == \
        ("001-1", ["0.", "1.", "2.", "3."], 2, "Counting Problem", "short")
    assert item.video == tmp_path / "data" / "fFjv93ACGo8.mp4"
    assert len(loaded.bad) == 1 and "outside the 4 options" in loaded.bad[0].reason and loaded.bad[0].item == "1"
    (tmp_path / "videomme.json").write_text(json.dumps(rows[:1]))
    assert load_benchmark("videomme", tmp_path / "videomme.json", tmp_path).items[0].answer == 2


def test_longvideobench_json(tmp_path):
    rows = [{"video_id": "86CxyhFV9MI", "question": "In the video, which subtitles appear at the same time?",
             "question_wo_referring_query": "Which subtitles appear?", "candidates": ["yes", "no", "maybe", "unsure"],
             "correct_choice": 1, "position": [1, 2], "topic_category": "NP-News-Programs",
             "question_category": "TOS", "level": "L2-Relation", "id": "86CxyhFV9MI_0",
             "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json", "duration_group": 600,
             "starting_timestamp_for_subtitles": 0, "duration": 527.0, "view_count": 1},
            {"id": "broken", "question": "?", "candidates": ["x", "y"], "video_path": "b.mp4"}]
    (tmp_path / "lvb_val.json").write_text(json.dumps(rows))
    loaded = load_benchmark("longvideobench", tmp_path / "lvb_val.json", tmp_path / "videos")
    item = loaded.items[0]
    assert (item.answer, item.category, item.duration, item.video.name) == (1, "TOS", "600", "86CxyhFV9MI.mp4")
    assert [b.reason for b in loaded.bad] == ["missing field 'correct_choice'"]


def test_mlvu_task_folder(tmp_path):
    json_dir = tmp_path / "MLVU" / "json"
    json_dir.mkdir(parents=True)
    (json_dir / "1_plotQA.json").write_text(json.dumps([
        {"video": "movie101_66.mp4", "duration": 246, "question": "What color is the main male character?",
         "candidates": ["Yellow", "Red", "Green", "Blue"], "answer": "Yellow", "question_type": "plotQA"}]))
    (json_dir / "5_order.json").write_text(json.dumps([
        {"video": "order_1.mp4", "duration": 400, "question": "Order?", "candidates": ["1-2", "2-1"],
         "answer": "2-1", "question_type": "order"},
        {"video": "order_2.mp4", "duration": 400, "question": "Order?", "candidates": ["1-2", "2-1"],
         "answer": "3-1", "question_type": "order"}]))
    loaded = load_benchmark("mlvu", json_dir, tmp_path / "MLVU" / "video")
    assert [(i.id, i.answer, i.category) for i in loaded.items] == [("1_plotQA/0", 0, "plotQA"), ("5_order/0", 1, "order")]
    assert loaded.items[1].video == tmp_path / "MLVU" / "video" / "5_order" / "order_1.mp4"
    assert loaded.bad[0].source.endswith("5_order.json") and "'3-1' is not a letter" in loaded.bad[0].reason


def test_generic_jsonl_reports_bad_lines(tmp_path):
    path = tmp_path / "mcq.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "q1", "video": "v.mp4", "question": "Q?", "options": OPTIONS, "answer": "B"}),
        json.dumps({"id": "q2", "video": "v.mp4", "question": "Q?", "options": OPTIONS, "answer": 3, "category": "x"}),
        json.dumps({"id": "q3", "video": "v.mp4", "question": "Q?", "options": OPTIONS, "answer": "red"}),
        "{broken",
        json.dumps({"id": "q5", "video": "v.mp4", "question": "", "options": OPTIONS, "answer": "A"}),
        json.dumps({"id": "q6", "video": "v.mp4", "question": "Q?", "options": ["only one"], "answer": "A"}),
    ]) + "\n")
    loaded = load_benchmark("jsonl", path)
    assert [(i.id, i.answer) for i in loaded.items] == [("q1", 1), ("q2", 3), ("q3", 2)]
    assert [(b.item, b.reason.split(" (")[0]) for b in loaded.bad] == [
        ("line 4", "not valid JSON"), ("line 5", "empty question"), ("line 6", "needs at least two non-empty options")]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("mvbench", path)


@pytest.mark.parametrize("reply, expected", [
    ("B", 1), ("(C)", 2), ("D.", 3), ("The answer is B.", 1), ("The best answer is: (D) nothing happens", 3),
    ("Answer: C", 2), ("option B", 1), ("B) a blue circle", 1),
    ("A red square appears, then it leaves.", 0),  # no letter: "a red square" is the only option text it holds
    ("A blue circle.", 1),  # the article "A" is not a letter; the option text decides
    ("I think it is C", 2), ("It's a blue circle", 1), ("red", 2),
    ("E", None), ("", None), ("I cannot tell from the video.", None), ("a red square or a blue circle", None),
    # the forms lmms-eval reads right and our reading once did not
    ("A is correct", 0), ("A is the correct answer.", 0), ("A because it is red.", 0),
    ("Not B, the answer is A.", 0), ("nothing happens.", 3), ("Nothing happens", 3),
])
def test_choice_extraction(reply, expected):
    assert extract_choice(reply, OPTIONS) == expected


def _items(videos, n, seed=0):
    rng = random.Random(seed)
    clips = sorted(videos.glob("*.mp4"))
    return [MCQItem(f"q{i}", clips[i % len(clips)], f"Question {i}: which one?", [f"option {k} of {i}" for k in range(4)],
                    rng.randrange(4), category=f"cat{i % 3}", duration=["short", "long"][i % 2]) for i in range(n)]


class Oracle:
    """A test double at the generation boundary that always replies with the right letter."""

    def __init__(self, items):
        self.letters = {mcq_prompt(i.question, i.options): i.answer_letter for i in items}
        self.calls = 0

    def __call__(self, clips, prompts):
        assert all(c.frames.ndim == 4 and c.frames.shape[-1] == 3 and len(c.times) == len(c) for c in clips)
        self.calls += len(prompts)
        return [f"The answer is ({self.letters[p]})." for p in prompts]


def test_oracle_scores_100_and_random_scores_chance(raw_videos, tmp_path):
    items = _items(raw_videos, 400)
    summary = evaluate(items, Oracle(items), num_frames=4, batch_size=16, progress=False)
    assert summary["accuracy"] == 1.0 and summary["scored"] == 400 and summary["unparsed"] == 0
    assert set(summary["by_category"]) == {"cat0", "cat1", "cat2"} and summary["macro_accuracy"] == 1.0
    rng = random.Random(1)
    summary = evaluate(items, lambda v, p: [rng.choice("ABCD") for _ in p], num_frames=4, batch_size=16, progress=False)
    assert 0.18 < summary["accuracy"] < 0.32


def test_resume_missing_videos_and_limit(raw_videos, tmp_path):
    items = _items(raw_videos, 10)
    items[3].video = raw_videos / "missing.mp4"
    oracle, path = Oracle(items), tmp_path / "predictions.jsonl"
    first = evaluate(items, oracle, num_frames=4, predictions_path=path, limit=6, progress=False)
    assert first["items"] == 6 and first["errors"] == 1 and first["scored"] == 5 and oracle.calls == 5
    summary = evaluate(items, oracle, num_frames=4, predictions_path=path, progress=False)
    assert oracle.calls == 9 and summary["items"] == 10 and summary["accuracy"] == 1.0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 10
    assert "video not found" in read_predictions(path)["q3"]["error"]


def test_niah_puts_the_needle_at_the_requested_frame(tmp_path):
    path = make_niah(tmp_path, lengths=(8, 12), depths=(0.0, 0.5, 1.0), per_cell=1, size=64)
    items = load_benchmark("jsonl", path).items
    assert len(items) == 6
    for item in items:
        meta = item.meta
        frames = read_frames(item.video, item.frame_indices).astype(float)
        assert len(frames) == meta["length"] and meta["needle_frame"] == round(meta["depth"] * (meta["length"] - 1))
        needle = render_needle(meta["kind"], item.options[item.answer], 64).astype(float)
        errors = [np.abs(f - needle).mean() for f in frames]
        assert int(np.argmin(errors)) == meta["needle_frame"] and min(errors) < 12 < sorted(errors)[1]


def test_niah_grid_and_heatmap(tmp_path):
    preds = [{"id": f"{n}-{d}-{k}", "error": None, "correct": (k == 0 or d < 0.5),
              "meta": {"length": n, "depth": d}} for n in (8, 16) for d in (0.0, 1.0) for k in range(2)]
    grid = niah_grid(preds)
    assert grid == {"lengths": [8, 16], "depths": [0.0, 1.0], "accuracy": [[1.0, 0.5], [1.0, 0.5]]}
    png = plot_heatmap(grid, tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_niah_table_is_the_heatmap_as_text():
    preds = [{"id": f"{n}-{d}-{k}", "error": None, "correct": d == 0.0 or k == 0, "meta": {"length": n, "depth": d}}
             for n in (32, 8, 16) for d in (0.0, 1.0) for k in range(2)]
    preds.append({"id": "lost", "error": "video not found", "correct": False, "meta": {"length": 8, "depth": 0.0}})
    table = niah_table(preds, {"errors": 1, "unparsed": 0}, "NIAH — some-model")
    assert table.splitlines() == [
        "NIAH — some-model",
        "accuracy (%) by haystack length (frames) and needle depth",
        " frames     0%   100%    all",
        "      8  100.0   50.0   75.0",
        "     16  100.0   50.0   75.0",
        "     32  100.0   50.0   75.0",
        "    all  100.0   50.0   75.0",
        "12 items scored; errors (missing/unreadable video): 1; unparsed replies: 0",
    ]


def test_niah_command_prints_lengths_as_numbers_not_as_benchmark_categories(tmp_path, capsys):
    from tpo.evaluate.__main__ import main

    make_niah(tmp_path / "niah", lengths=(8, 16), depths=(0.0, 1.0), per_cell=1, size=64)
    assert main(["niah", "--data", str(tmp_path / "niah"), "--model", "builtin:tiny-llava_onevision",
                 "--out", str(tmp_path / "out"), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    title = out.index("NIAH — builtin:tiny-llava_onevision (generate, protocol tpo)")
    assert out[title + 2].split() == ["frames", "0%", "100%", "all"]
    assert [line.split()[0] for line in out[title + 3:title + 6]] == ["8", "16", "all"]
    assert not any(line.startswith("jsonl —") or "category" in line for line in out)


def test_option_text_matches_without_its_final_period():
    assert extract_choice("Basketball", ["Football.", "Basketball."]) == 1
    assert extract_choice("basketball.", ["Football.", "Basketball."]) == 1


def _unreadable(tmp_path, benchmark):
    """--data that cannot be read as the benchmark's annotations: a folder, or a file of other bytes."""
    if benchmark == "mlvu":  # a folder is what MLVU expects: one of its task files is not text
        (tmp_path / "json").mkdir()
        (tmp_path / "json" / "1_plotQA.json").write_bytes(b"\xff\xfe\x00binary")
        return tmp_path / "json", tmp_path / "json" / "1_plotQA.json"
    if benchmark == "videomme-parquet":
        (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
        return tmp_path / "test-00000-of-00001.parquet", tmp_path / "test-00000-of-00001.parquet"
    if benchmark == "longvideobench-binary":
        (tmp_path / "lvb_val.json").write_bytes(b"\xff\xfe\x00binary")
        return tmp_path / "lvb_val.json", tmp_path / "lvb_val.json"
    (tmp_path / "videomme").mkdir()
    return tmp_path / "videomme", tmp_path / "videomme"


@pytest.mark.parametrize("case", ["videomme", "longvideobench", "jsonl", "mlvu", "videomme-parquet",
                                  "longvideobench-binary"])
def test_unreadable_data_is_one_error_line(tmp_path, capsys, case):
    from tpo.evaluate.__main__ import main

    data, named = _unreadable(tmp_path, case)
    argv = ["mcq", "--benchmark", case.split("-")[0], "--data", str(data), "--model", "builtin:tiny-llava_onevision",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("error: ") and str(named) in line and "expected" in line
