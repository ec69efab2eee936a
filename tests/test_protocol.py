"""``tpo evaluate``'s protocols end to end: the default (lmms-eval) asks a served model lmms-eval's
prompts on lmms-eval's frames and reads its replies lmms-eval's way; ``--protocol tpo`` asks ours;
the summary says which, and counts the replies the two readings read differently."""

import json

import pytest

from tpo.evaluate import lmms_eval
from tpo.evaluate.__main__ import main
from tpo.evaluate.answers import mcq_prompt
from tpo.evaluate.benchmarks import MCQItem
from tpo.evaluate.mcq import read_predictions
from tpo.evaluate.protocol import Protocol
from tpo.errors import TPOError
from tpo.models import FAMILIES

OPTIONS = ["red", "green", "blue", "yellow"]


@pytest.fixture()
def benchmarks(tmp_path, raw_videos):
    clips = sorted(raw_videos.glob("*.mp4"))
    lvb = [{"id": f"lvb{i}", "video_path": clip.name, "question": "Which colour comes first?", "candidates": OPTIONS,
            "correct_choice": i % 4, "duration_group": 15, "question_category": "TOS"} for i, clip in enumerate(clips)]
    mme = [{"question_id": f"mme{i}", "videoID": clip.stem, "question": "Which colour comes first?",
            "options": [f"{'ABCD'[k]}. {o}" for k, o in enumerate(OPTIONS)], "answer": "A", "duration": "short",
            "task_type": "Temporal Perception"} for i, clip in enumerate(clips)]
    (tmp_path / "lvb_val.json").write_text(json.dumps(lvb))
    (tmp_path / "videomme.json").write_text(json.dumps(mme))
    return tmp_path


def _run(scripted_server, raw_videos, data, out, benchmark, *extra):
    logged = len(scripted_server.requests)
    argv = ["mcq", "--benchmark", benchmark, "--data", str(data), "--videos", str(raw_videos), "--out", str(out),
            "--backend", "openai", "--base-url", scripted_server.base_url, "--model", "scripted-vlm",
            "--num-frames", "8", *extra]
    assert main(argv) == 0
    questions = [r for r in scripted_server.requests[logged:] if r["max_tokens"] != 1]  # not the frame check's
    return json.loads((out / "summary.json").read_text()), questions


def test_lmms_eval_is_the_default_and_guesses_are_seeded(benchmarks, raw_videos, scripted_server, tmp_path):
    summary, sent = _run(scripted_server, raw_videos, benchmarks / "lvb_val.json", tmp_path / "a", "longvideobench")
    assert summary["protocol"] == "lmms-eval" and summary["lmms_eval_version"] == lmms_eval.LMMS_EVAL_VERSION
    assert summary["max_new_tokens"] == 32 and summary["frame_rule"] == "llava" and summary["guess_seed"] == 0
    assert {r["prompt"] for r in sent} == {lmms_eval.longvideobench_prompt("Which colour comes first?", OPTIONS)}
    assert all(r["video_frames"] == [8] for r in sent)
    # "I see red, then ..." holds no capital A-E: LongVideoBench guesses, the tpo reading reads no single option
    assert summary["guessed"] == summary["unparsed"] == summary["scored"] == 4
    again, _ = _run(scripted_server, raw_videos, benchmarks / "lvb_val.json", tmp_path / "b", "longvideobench")
    first, second = (read_predictions(tmp_path / name / "predictions.jsonl") for name in ("a", "b"))
    assert {k: r["prediction"] for k, r in first.items()} == {k: r["prediction"] for k, r in second.items()}
    assert all(r["guessed"] for r in first.values())
    other, _ = _run(scripted_server, raw_videos, benchmarks / "lvb_val.json", tmp_path / "c", "longvideobench",
                    "--guess-seed", "7")
    assert other["guess_seed"] == 7


def test_the_tpo_protocol_and_the_readings_differ(benchmarks, raw_videos, scripted_server, tmp_path):
    lmms, sent = _run(scripted_server, raw_videos, benchmarks / "videomme.json", tmp_path / "l", "videomme",
                      "--prompt-variant", "llava_vid")
    assert lmms["prompt_variant"] == "llava_vid" and lmms["max_new_tokens"] == 16
    assert {r["prompt"] for r in sent} == {lmms_eval.videomme_prompt("Which colour comes first?", OPTIONS, "llava_vid")}
    ours, sent = _run(scripted_server, raw_videos, benchmarks / "videomme.json", tmp_path / "t", "videomme",
                      "--protocol", "tpo", "--num-frames", "1")
    assert ours["protocol"] == "tpo" and "lmms_eval_version" not in ours and ours["frame_rule"] == "segment-centres"
    assert {r["prompt"] for r in sent} == {mcq_prompt("Which colour comes first?", OPTIONS)}
    # shown one frame, the scripted policy names one colour ("I see blue."): our reading takes it, lmms-eval's none
    rows = read_predictions(tmp_path / "t" / "predictions.jsonl").values()
    assert ours["read_differently"] == 4 and ours["unparsed"] == 0
    assert all(r["prediction"] in "ABCD" and r["other_reading"] is None for r in rows)


def test_protocol_reads_and_refuses():
    item = MCQItem("x", None, "q", OPTIONS, 1)
    lmms = Protocol("lmms-eval", "videomme")
    assert lmms.read("<think>maybe A</think> The answer is (B).", item).choice == 1
    assert lmms.read("green", item).choice is None and lmms.read("green", item, "tpo").choice == 1
    assert Protocol("lmms-eval", "longvideobench").read("Answer: C", item).choice == 0  # its first capital A-E
    with pytest.raises(TPOError, match="no task for 'jsonl'"):
        Protocol("lmms-eval", "jsonl")
    assert Protocol("lmms-eval", "mlvu", family="qwen2_5_vl").frame_indices(100, 8.0, 5) == [0, 33, 66, 99]


@pytest.mark.parametrize("family", sorted(FAMILIES))  # the families tpo supports when the tests run
def test_every_family_has_an_lmms_eval_frame_rule(family):
    protocol = Protocol("lmms-eval", "videomme", family)
    assert protocol.frame_rule == lmms_eval.FRAME_RULES[family] and protocol.frame_rule in lmms_eval.RULES
    assert protocol.settings()["frame_rule"] == protocol.frame_rule
    assert 0 < len(protocol.frame_indices(300, 8.0, 32)) <= 32


def test_a_family_without_a_frame_rule_is_refused(monkeypatch, benchmarks, raw_videos, scripted_server, tmp_path,
                                                   capsys):
    monkeypatch.delitem(lmms_eval.FRAME_RULES, "qwen2_vl")
    with pytest.raises(TPOError, match="no lmms-eval 0.7.3 frame rule for family 'qwen2_vl'.*--protocol tpo"):
        Protocol("lmms-eval", "videomme", "qwen2_vl")
    assert Protocol("tpo", "videomme", "qwen2_vl").frame_rule == "segment-centres"  # ours needs no rule
    assert Protocol("lmms-eval", "videomme").frame_rule == "llava"  # a served model of no named family
    argv = ["mcq", "--benchmark", "videomme", "--data", str(benchmarks / "videomme.json"), "--videos", str(raw_videos),
            "--out", str(tmp_path / "o"), "--backend", "openai", "--base-url", scripted_server.base_url,
            "--model", "scripted-vlm", "--family", "no_such_family"]
    logged = len(scripted_server.requests)
    assert main(argv) == 2
    assert "frame rule for family 'no_such_family'" in capsys.readouterr().err
    assert len(scripted_server.requests) == logged  # refused before asking anything


def test_the_new_rules_differ_from_llavas_where_the_video_is_short():
    """37 frames, 64 asked: LLaVA's rule repeats frames, the capped rules show each once, InternVL's
    the same; Qwen3.5's 2 fps path shows 8 of a 4.6 s video (8 fps), even when 64 are asked."""
    assert len(lmms_eval.frame_indices("llava", 37, 8.0, 64)) == 64
    assert lmms_eval.frame_indices("llava_capped", 37, 8.0, 64) == list(range(37))
    assert lmms_eval.frame_indices("segment_centres_capped", 37, 8.0, 64) == list(range(37))
    assert lmms_eval.frame_indices("qwen_fps", 37, 8.0, 64) == [0, 5, 10, 15, 21, 26, 31, 36]
    assert lmms_eval.frame_indices("qwen_fps", 1201, 8.0, 64) == lmms_eval.qwen_frames(1201, 64)  # 300 at 2 fps, 64 kept
