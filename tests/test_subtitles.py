"""Video-MME "w/ subs": reading the authors' .srt files and the subtitle lines at the shown frames."""

import json

import pytest

from tpo.errors import TPOError
from tpo.evaluate.__main__ import main
from tpo.evaluate.benchmarks import load_benchmark
from tpo.evaluate.mcq import evaluate, read_predictions
from tpo.evaluate.subtitles import NO_SUBTITLES, SUBTITLES_INTRO, SubtitleError, read_srt

# raw_videos clips are 64 frames at 8 fps: 4 uniform frames are shown at 1, 3, 5 and 7 seconds.
SHOWN_TIMES = [1.0, 3.0, 5.0, 7.0]
SRT = """\ufeff1
00:00:00,500 --> 00:00:01,200
<font color="white" size=".72c">first line</font>

2
00:00:01,200 --> 00:00:02,900
never shown: between frames

3
00:00:02,000 --> 00:00:03,000
ends exactly at a frame

4
00:00:04,500 --> 00:00:07,500 X1:10 X2:20
<font color="white" size=".72c">two</font>
<i>lines</i>
"""
QUESTION = "What colour is the shape first?"


def _write_srt(path, text=SRT):
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))


def test_srt_with_bom_crlf_tags_and_settings(tmp_path):
    _write_srt(tmp_path / "a.srt")
    subs = read_srt(tmp_path / "a.srt")
    assert [(s.start, s.end, s.text) for s in subs][::3] == [(0.5, 1.2, "first line"), (4.5, 7.5, "two lines")]
    assert len(subs) == 4


@pytest.mark.parametrize("text, line", [("1\n00:00:01,000 -> 00:00:02,000\nhi\n", 2),
                                        ("1\n00:00:01,000 --> 00:00:02\nhi\n\n2\n", 2),
                                        ("1\n00:00:01,000 --> 00:00:02,000\nhi\n\n2\n00:00:03 --> 4\nx\n", 6)])
def test_malformed_srt_names_file_and_line(tmp_path, text, line):
    (tmp_path / "bad.srt").write_text(text)
    with pytest.raises(SubtitleError, match=rf"bad\.srt line {line}: "):
        read_srt(tmp_path / "bad.srt")


def test_blocks_without_a_time_are_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "stray.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n\ncontinued\n\n\n2\n"
                                        "00:00:03,000 --> 00:00:04,000\nthere\n\n3\n")
    assert [s.text for s in read_srt(tmp_path / "stray.srt")] == ["hi", "there"]
    assert "stray.srt line 5: skipped a block without a time" in caplog.text and "line 12" in caplog.text


@pytest.fixture()
def videomme(tmp_path, raw_videos):
    """Video-MME in its distributed layout: annotation rows, data/<videoID>.mp4, subtitle/<videoID>.srt."""
    (tmp_path / "data").mkdir()
    (tmp_path / "subtitle").mkdir()
    rows = []
    for n, (video, clip) in enumerate(zip(["withSubs", "noSubs", "badSubs"], sorted(raw_videos.glob("*.mp4")))):
        (tmp_path / "data" / f"{video}.mp4").symlink_to(clip)
        rows += [{"video_id": f"00{n}", "duration": "short", "domain": "Life Record", "sub_category": "Daily Life",
                  "url": "", "videoID": video, "question_id": f"00{n}-{k}", "task_type": "Temporal Perception",
                  "question": QUESTION, "options": ["A. red", "B. green", "C. blue", "D. yellow"], "answer": "B"}
                 for k in (1, 2)]
    _write_srt(tmp_path / "subtitle" / "withSubs.srt")
    (tmp_path / "subtitle" / "badSubs.srt").write_text("1\n00:00:01,000 --> soon\nhi\n")
    (tmp_path / "videomme.json").write_text(json.dumps(rows))
    return tmp_path


class Recorder:
    def __init__(self):
        self.prompts = {}  # prompt -> the times of the frames shown with it

    def __call__(self, clips, prompts):
        for clip, prompt in zip(clips, prompts):
            self.prompts[prompt] = clip.times
        return ["B"] * len(prompts)


def test_prompt_holds_the_lines_at_the_shown_frames(videomme):
    loaded = load_benchmark("videomme", videomme / "videomme.json", videomme / "data", videomme / "subtitle")
    assert loaded.items[0].subtitles == videomme / "subtitle" / "withSubs.srt"
    recorder = Recorder()
    summary = evaluate(loaded.items, recorder, num_frames=4, batch_size=8, predictions_path=videomme / "p.jsonl",
                       progress=False)
    prompts = sorted(recorder.prompts, key=lambda p: "No subtitles" in p)
    assert len(prompts) == 2 and all(recorder.prompts[p] == SHOWN_TIMES for p in prompts)
    assert prompts[0].startswith(f"{SUBTITLES_INTRO}\nfirst line\ntwo lines\n{QUESTION}\nA. red\n")
    assert prompts[1].startswith(f"{SUBTITLES_INTRO}\n{NO_SUBTITLES}\n{QUESTION}\n")
    # the malformed file costs its own video's questions, named by file and line; the rest are scored
    assert summary["errors"] == 2 and summary["scored"] == 4 and summary["accuracy"] == 1.0
    assert "badSubs.srt line 2" in read_predictions(videomme / "p.jsonl")["002-1"]["error"]


def test_without_subtitles_the_prompt_is_unchanged(videomme):
    loaded = load_benchmark("videomme", videomme / "videomme.json", videomme / "data")
    recorder = Recorder()
    evaluate(loaded.items, recorder, num_frames=4, progress=False)
    assert all(p.startswith(QUESTION) for p in recorder.prompts) and len(recorder.prompts) == 1
    with pytest.raises(ValueError, match="videomme only"):
        load_benchmark("jsonl", videomme / "videomme.json", subtitles=videomme / "subtitle")
    with pytest.raises(TPOError, match="subtitle folder not found"):
        load_benchmark("videomme", videomme / "videomme.json", subtitles=videomme / "nope")


def test_cli_names_the_subtitle_setting_and_scoring(videomme, capsys):
    out = videomme / "out"
    argv = ["mcq", "--benchmark", "videomme", "--data", str(videomme / "videomme.json"), "--videos",
            str(videomme / "data"), "--model", "builtin:tiny-qwen2_vl", "--out", str(out), "--num-frames", "4",
            "--dtype", "float32", "--device", "cpu", "--protocol", "tpo", "--limit", "3", "--scoring", "likelihood"]
    assert main(argv + ["--subtitles", str(videomme / "subtitle")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subtitles"] is True and summary["scoring"] == "likelihood" and summary["scored"] == 3
    assert "videomme (w/ subs)" in capsys.readouterr().out
    rows = list(read_predictions(out / "predictions.jsonl").values())
    for row in rows:
        logps = row["option_logps"]
        assert row["reply"] is None and len(logps) == 4 and all(x < 0 for x in logps)
        assert row["prediction"] == "ABCD"[logps.index(max(logps))]
    assert main(argv[:-2] + ["--out", str(videomme / "plain")]) == 0
    assert json.loads((videomme / "plain" / "summary.json").read_text())["subtitles"] is False
    assert "videomme (w/o subs)" in capsys.readouterr().out


def test_resuming_with_other_settings_is_refused(videomme, capsys):
    """Predictions of two settings (w/ and w/o subtitles, two scorings) must never mix in one summary."""
    out = videomme / "resume"
    argv = ["mcq", "--benchmark", "videomme", "--data", str(videomme / "videomme.json"), "--videos",
            str(videomme / "data"), "--model", "builtin:tiny-qwen2_vl", "--out", str(out), "--num-frames", "4",
            "--dtype", "float32", "--device", "cpu", "--protocol", "tpo", "--limit", "2", "--scoring", "likelihood"]
    assert main(argv) == 0
    assert main(argv + ["--subtitles", str(videomme / "subtitle")]) == 2
    assert "subtitles: False -> True" in capsys.readouterr().err
    assert main(argv[:-1] + ["generate"]) == 2
    assert main(argv[:-2] + ["--limit", "3", "--scoring", "likelihood"]) == 0  # a longer run of the same settings
    assert json.loads((out / "summary.json").read_text())["scored"] == 3
