"""Rerunning ``tpo evaluate`` into the same ``--out``: items that errored are retried, answered ones kept;
a changed input the model sees (videos, subtitles) is refused; a run that mostly errored fails."""

import json

import pytest

import tpo.evaluate.__main__ as evaluate_cli
from tpo.evaluate.mcq import read_predictions
from tpo.evaluate.ranks import all_done, merge

QUESTION = "Which shape comes first?"


class Replies:
    """The model's boundary: replies "A" to every prompt and counts the prompts it was asked."""

    def __init__(self):
        self.asked = 0

    def __call__(self, clips, prompts):
        self.asked += len(prompts)
        return ["A"] * len(prompts)


@pytest.fixture()
def model(monkeypatch):
    replies = Replies()
    monkeypatch.setattr(evaluate_cli, "_answerer", lambda args, device: replies)
    return replies


def _videos(folder, raw_videos, names):
    folder.mkdir()
    clips = sorted(raw_videos.glob("*.mp4"))
    for name, clip in zip(names, clips):
        (folder / f"{name}.mp4").symlink_to(clip)
    return folder


def _jsonl(path, names):
    rows = [{"id": f"q{i}", "video": f"{name}.mp4", "question": QUESTION, "options": ["red", "blue", "green"],
             "answer": 0, "frame_indices": [0, 2, 4, 6]} for i, name in enumerate(names)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(benchmark, data, videos, out, *extra):
    return evaluate_cli.main(["mcq", "--benchmark", benchmark, "--data", str(data), "--videos", str(videos),
                              "--out", str(out), "--model", "builtin:tiny-llava_onevision", "--protocol", "tpo",
                              "--no-time-instruction", "--num-frames", "4", *extra])


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error:")]


NAMES = ["a", "b", "c", "d"]


def test_a_wrong_video_folder_fails_the_run_and_the_corrected_rerun_answers_every_item(
        raw_videos, tmp_path, model, capsys):
    data, out = _jsonl(tmp_path / "items.jsonl", NAMES), tmp_path / "out"
    assert _run("jsonl", data, tmp_path / "wrong", out) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: 4 of 4 items errored")
    assert "(4 of them)" in lines[0] and "video not found" in lines[0] and str(tmp_path / "wrong") in lines[0]
    assert json.loads((out / "summary.json").read_text())["errors"] == 4 and len(_rows(out)) == 4
    assert model.asked == 0

    videos = _videos(tmp_path / "videos", raw_videos, NAMES)
    assert _run("jsonl", data, videos, out) == 0  # nothing answered is kept, so the new folder may replace the old
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["scored"] == 4 and model.asked == 4
    assert [r["id"] for r in _rows(out)] == ["q0", "q1", "q2", "q3"]


def test_a_resume_retries_the_items_that_errored_and_keeps_the_answered_ones(raw_videos, tmp_path, model):
    videos = _videos(tmp_path / "videos", raw_videos, NAMES[:3])  # d.mp4 is not there yet
    data, out = _jsonl(tmp_path / "items.jsonl", NAMES), tmp_path / "out"
    assert _run("jsonl", data, videos, out) == 0  # 1 of 4 errored: not more than half
    assert json.loads((out / "summary.json").read_text())["errors"] == 1 and model.asked == 3
    answered = {r["id"]: r for r in _rows(out) if r["error"] is None}

    (videos / "d.mp4").symlink_to(sorted(raw_videos.glob("*.mp4"))[3])
    assert _run("jsonl", data, videos, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["scored"] == 4
    assert model.asked == 4  # only d was asked again
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]  # q3's row replaced, not added
    assert all(rows[i] == answered[f"q{i}"] for i in range(3))


def test_a_changed_video_folder_is_refused(raw_videos, tmp_path, model, capsys):
    first, second = (_videos(tmp_path / name, raw_videos, NAMES) for name in ("first", "second"))
    data, out = _jsonl(tmp_path / "items.jsonl", NAMES), tmp_path / "out"
    assert _run("jsonl", data, first, out, "--limit", "2") == 0
    assert _run("jsonl", data, second, out) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert f"videos: {str(first.resolve())!r} -> {str(second.resolve())!r}" in line and "another --out" in line
    assert model.asked == 2 and len(_rows(out)) == 2


def test_a_changed_subtitle_folder_is_refused(raw_videos, tmp_path, model, capsys):
    videos = _videos(tmp_path / "data", raw_videos, NAMES)
    rows = [{"question_id": f"{name}-1", "videoID": name, "question": QUESTION, "duration": "short",
             "options": ["A. red", "B. blue", "C. green"], "answer": "A", "task_type": "Temporal Perception"}
            for name in NAMES]
    data = tmp_path / "videomme.json"
    data.write_text(json.dumps(rows))
    subtitles = [tmp_path / "subtitle", tmp_path / "subtitle_v2"]
    for folder in subtitles:
        folder.mkdir()
    out = tmp_path / "out"
    assert _run("videomme", data, videos, out, "--subtitles", str(subtitles[0])) == 0
    assert _run("videomme", data, videos, out, "--subtitles", str(subtitles[1])) == 2
    [line] = _error_lines(capsys.readouterr().err)
    old, new = (str(folder.resolve()) for folder in subtitles)
    assert f"subtitle_folder: {old!r} -> {new!r}" in line


def test_an_answer_in_any_rank_file_replaces_an_error(tmp_path):
    """A retried item answered by rank 0 of this run must win over its error saved by rank 1 of the last."""
    error = {"id": "a", "error": "video not found: a.mp4", "correct": False}
    answer = {"id": "a", "error": None, "correct": True}
    (tmp_path / "predictions.rank0.jsonl").write_text(json.dumps(answer) + "\n")
    (tmp_path / "predictions.rank1.jsonl").write_text(json.dumps(error) + "\n")
    assert all_done(tmp_path)["a"] == answer
    merge(tmp_path, ["a"])
    assert read_predictions(tmp_path / "predictions.jsonl") == {"a": answer}


@pytest.mark.slow
def test_two_processes_fail_on_a_wrong_video_folder_and_their_rerun_retries_every_item(raw_videos, tmp_path):
    from test_evaluate_ranks import evaluate_in_processes, write_items

    data, out = write_items(raw_videos, tmp_path / "items.jsonl"), tmp_path / "out"
    failed = evaluate_in_processes(data, tmp_path / "wrong", out, 2)
    assert failed.returncode != 0  # rank 0's status 2; torchrun reports any failed rank as its own 1
    assert failed.stderr.count("error: 7 of 7 items errored") == 1 and "video not found" in failed.stderr
    assert json.loads((out / "summary.json").read_text())["errors"] == 7 and not list(out.glob("predictions.rank*"))
    fixed = evaluate_in_processes(data, raw_videos, out, 2)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["scored"] == 7 and summary["processes"] == 2
    assert [r["id"] for r in _rows(out)] == [f"q{i}" for i in range(7)]
