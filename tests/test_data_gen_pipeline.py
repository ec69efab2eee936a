"""The whole data_gen pipeline on synthetic clips, a scripted local server and a tiny video-LMM."""

import json
import random
import shutil

import lightning as L
import pytest

from data_gen.merge import merge_shards
from data_gen.pipeline import Pipeline
from data_gen.scripted_server import ScriptedServer, write_questions
from tpo.data.datamodule import PreferenceDataModule
from tpo.data.records import read_records
from tpo.errors import TPOError
from tpo.module import TPOModule
from tpo.synthetic.world import render_frames, random_events, write_video

from data_gen_support import config, items, outputs, run, unreachable

SECRET = "sk-test-7f3a9c-never-write-me"


def test_end_to_end_records_follow_the_contract(reference_run, raw_videos):
    out, manifest = reference_run
    stats = json.loads((out / "stats.json").read_text())
    assert stats["videos"] == {"found": 4, "usable": 4, "skipped": 0, "skipped_by_reason": {}}
    assert stats["segments"] == {"incomplete": 4, "irrelevant": 4}
    assert stats["questions"]["written"] == 16 and stats["answers"]["ok"] == 32
    records, bad = read_records(out / "preferences.jsonl")  # video_root comes from manifest.json
    assert not bad and len(records) == stats["records"]["written"] > 0
    dropped = [json.loads(line) for line in (out / "filtered_out.jsonl").read_text().splitlines()]
    assert len(records) + len(dropped) == stats["pairs"]["candidates"] == 16
    by_rule = {}
    for d in dropped:
        by_rule[d["filter"]["rule"]] = by_rule.get(d["filter"]["rule"], 0) + 1
        assert d["filter"]["kept"] is False and d["filter"]["reason"]
    assert {int(k.split(":")[0]): v for k, v in stats["pairs"]["dropped_by_rule"].items()} == \
        {k: v for k, v in by_rule.items() if k != "identical"}
    for r in (rec.to_json() for rec in records):
        assert r["filter"]["kept"] and r["filter"]["judge"] == "scripted-judge"
        assert len(r["frame_indices"]) == 16 and r["chosen"] != r["rejected"]
        if r["manipulation"] == "irrelevant":
            assert len(r["chosen_frames"]) == 4 and not set(r["chosen_frames"]) & set(r["rejected_frames"])
        else:
            assert r["chosen_frames"] == r["frame_indices"] and set(r["rejected_frames"]) < set(r["chosen_frames"])
        assert [c["frame"] for c in r["captions"]] == r["chosen_frames"]
        assert all(c["text"].startswith("A ") for c in r["captions"])  # the captioner looked at each frame
        assert r["provenance"]["policy"] == "builtin:tiny-llava_onevision"
    assert manifest["token_usage"]["caption"]["prompt_tokens"] > 0
    assert manifest["config"]["api"]["api_key_env"] == "OPENAI_API_KEY"


def test_captions_describe_the_actual_frames(reference_run):
    out, _ = reference_run
    record = json.loads((out / "preferences.jsonl").read_text().splitlines()[0])
    colours = [c["text"].split()[1] for c in record["captions"]]
    assert len(set(colours)) >= 2 if record["manipulation"] == "incomplete" else len(set(colours)) >= 1


def test_rerun_makes_no_calls_and_writes_the_same_files(reference_run, raw_videos, scripted_server):
    out, _ = reference_run
    before = outputs(out)
    _, manifest = run(raw_videos, out, scripted_server)
    assert sum(scripted_server.served.values()) == 0
    assert set(items(manifest, "computed").values()) == {0}
    assert outputs(out) == before


def test_changing_a_stage_reruns_it_and_no_earlier_stage(reference_run, raw_videos, scripted_server, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference_run[0], out)
    _, manifest = run(raw_videos, out, scripted_server, "postfilter.max_tokens=200")
    computed = items(manifest, "computed")
    assert computed["postfilter"] == 16 and computed["caption"] == computed["questions"] == computed["answer"] == 0
    _, manifest = run(raw_videos, out, scripted_server, "postfilter.max_tokens=200", "questions.per_segment=1")
    computed = items(manifest, "computed")
    assert computed["caption"] == 0 and computed["questions"] == 8
    assert json.loads((out / "stats.json").read_text())["questions"]["written"] == 8


def test_faults_are_recovered_and_change_nothing(reference_run, raw_videos, scripted_server, tmp_path):
    scripted_server.inject("429", "500", "timeout", "badbody", "garbage", "429", "500", "garbage")
    _, manifest = run(raw_videos, tmp_path / "faulty", scripted_server)
    calls = manifest["run"]["calls"]
    retries = {k.split("retries_")[1]: v for k, v in calls.items() if "retries_" in k}
    # (a slow machine may time out a few more requests than the one injected)
    expected = {"429": 2, "5xx": 2, "timeout": 1, "bad_response": 1, "malformed": 2}
    assert set(retries) == set(expected) and retries["timeout"] >= 1
    assert {k: v for k, v in retries.items() if k != "timeout"} == {k: v for k, v in expected.items() if k != "timeout"}
    assert outputs(tmp_path / "faulty") == outputs(reference_run[0])


def test_unrecoverable_items_are_recorded_and_retried_next_run(reference_run, raw_videos, scripted_server, tmp_path):
    out = tmp_path / "flaky"
    scripted_server.inject(*["500"] * 3)  # max_retries=2 (below): the first item fails for good this run
    pipeline, manifest = run(raw_videos, out, scripted_server, "api.max_retries=2", "api.max_concurrency=1")
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    caption_failures = [f for f in failures if f["stage"] == "caption"]
    assert len(caption_failures) == 1 and caption_failures[0]["transient"]
    assert "5xx after 3 attempts" in caption_failures[0]["reason"]
    frame = int(caption_failures[0]["id"].split("@")[1])
    downstream = [f for f in failures if f["stage"] != "caption"]
    assert downstream and all(f["reason"].startswith(f"no caption for frame {frame}") for f in downstream)
    run(raw_videos, out, scripted_server)
    assert outputs(out) == outputs(reference_run[0])


def _one_bad_question_more(request):
    reply = json.loads(write_questions(request))
    reply["questions"].insert(1, {"type": "poetry", "question": "Why?"})
    return json.dumps(reply)


def test_no_structured_output_and_bad_questions_change_no_record(reference_run, raw_videos, tmp_path):
    """An endpoint that refuses response_format, whose question replies each hold one bad question:
    each stage falls back to prompt-only once, the bad questions are dropped and counted, and the
    records are those of the reference run."""
    out = tmp_path / "prompt-only"
    with ScriptedServer(response_format="reject") as server:
        server.scripts["scripted-llm"] = _one_bad_question_more
        _, manifest = run(raw_videos, out, server)
    for model, items in (("scripted-llm", 8), ("scripted-judge", 16)):
        asked = [r for r in server.requests if r["model"] == model]
        assert asked[0]["response_format"] is not None and asked[0]["status"] == 400
        assert all(r["response_format"] is None for r in asked[1:]) and len({r["prompt"] for r in asked}) == items
    calls = manifest["run"]["calls"]
    assert calls["questions/structured_output_unsupported"] == calls["postfilter/structured_output_unsupported"] == 1
    assert "questions/retries_malformed" not in calls  # the bad questions cost no re-ask
    stats, reference = (json.loads((d / "stats.json").read_text()) for d in (out, reference_run[0]))
    assert reference["questions"]["dropped_by_reason"] == {}
    assert stats["questions"].pop("dropped_by_reason") == {"type not configured": 8}
    reference["questions"].pop("dropped_by_reason")
    assert stats == reference
    assert {k: v for k, v in outputs(out).items() if k != "stats.json"} == \
        {k: v for k, v in outputs(reference_run[0]).items() if k != "stats.json"}


def test_bad_videos_are_skipped_with_reasons(raw_videos, scripted_server, tmp_path, video_backend):
    videos = tmp_path / "videos"
    shutil.copytree(raw_videos, videos)
    (videos / "nested").mkdir()
    (videos / "nested" / "garbage.mp4").write_bytes(b"this is not a video")
    (videos / "empty.avi").write_bytes(b"")
    good = (videos / "clip_0000.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(good[: len(good) // 2])  # index at the end: unreadable
    faststart = tmp_path / "faststart.mp4"
    write_video(faststart, render_frames(random_events(random.Random(1), 4), 16), faststart=True)
    (videos / "truncated.mp4").write_bytes(faststart.read_bytes()[:2500])  # index first, stream cut short
    write_video(videos / "short.mp4", render_frames(random_events(random.Random(0), 1), 5))
    (videos / "notes.txt").write_text("not a video extension: ignored")
    _, manifest = run(videos, tmp_path / "out", scripted_server)
    skipped = {s["video"]: s for s in map(json.loads, (tmp_path / "out" / "skipped.jsonl").read_text().splitlines())}
    assert set(skipped) == {"nested/garbage.mp4", "empty.avi", "cut.mp4", "truncated.mp4", "short.mp4"}
    assert skipped["truncated.mp4"]["reason"].startswith("truncated")
    assert skipped["empty.avi"]["reason"] == "empty file"
    assert skipped["nested/garbage.mp4"]["reason"].startswith("cannot open")
    assert skipped["short.mp4"]["reason"].startswith("too few frames") and skipped["short.mp4"]["stage"] == "sample"
    assert manifest["counts"]["videos"]["usable"] == 4 and manifest["counts"]["records"]["written"] > 0


def test_api_key_is_used_but_never_written(raw_videos, scripted_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    out = tmp_path / "out"
    run(raw_videos, out, scripted_server)
    assert f"Bearer {SECRET}" in scripted_server.auth_headers
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_dry_run_counts_calls_and_makes_none(raw_videos, scripted_server, tmp_path):
    plan = Pipeline(config(raw_videos, tmp_path / "out", scripted_server), progress=False).dry_run()
    assert plan["caption"] == {"frames": 64, "calls_to_make": 64}
    assert plan["questions"]["calls_at_most"] == 8 and plan["answer"]["generations_at_most"] == 32
    assert sum(scripted_server.served.values()) == 0


def test_shards_merge_into_the_single_run(reference_run, raw_videos, scripted_server, tmp_path):
    for index in range(3):
        pipeline = Pipeline(config(raw_videos, tmp_path, scripted_server), num_shards=3, shard_index=index,
                            progress=False)
        pipeline.run()
    merged = merge_shards(tmp_path)
    assert outputs(tmp_path) == outputs(reference_run[0])
    assert merged["records"]["written"] == json.loads((reference_run[0] / "stats.json").read_text())["records"]["written"]


def test_merge_refuses_missing_shards(raw_videos, scripted_server, tmp_path):
    Pipeline(config(raw_videos, tmp_path, scripted_server), num_shards=2, shard_index=0, progress=False).run()
    with pytest.raises(ValueError, match=r"shards missing \[1\]"):
        merge_shards(tmp_path)


def test_generated_preferences_train(reference_run, tmp_path):
    out, _ = reference_run
    model = "builtin:tiny-llava_onevision"
    L.seed_everything(0)
    dm = PreferenceDataModule(str(out / "preferences.jsonl"), batch_size=2)
    module = TPOModule(model, "llava_onevision", lr=1e-3)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=3, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, logger=False, enable_checkpointing=False)
    trainer.fit(module, dm)
    assert trainer.global_step == 3 and trainer.callback_metrics["train/loss"].isfinite()


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_local_captioner_and_api_answerer(raw_videos, scripted_server, tmp_path, family):
    """The other two backends: a local `transformers` image captioner and an OpenAI-compatible policy,
    sent each side's frames as one video with their rate (tpo.models.served)."""
    logged = len(scripted_server.requests)
    _, manifest = run(raw_videos, tmp_path, scripted_server, "caption.backend=transformers",
                      f"caption.model=builtin:tiny-{family}", "caption.dtype=float32", "caption.max_tokens=8",
                      "caption.device=cpu", "answer.backend=openai", "answer.model=scripted-vlm",
                      "postfilter.enabled=false")
    calls = manifest["run"]["calls"]
    assert "caption/requests" not in calls and calls["answer/requests"] == 32
    assert manifest["run"]["items"]["caption"]["computed"] == 64
    records = [json.loads(line) for line in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    dropped = [json.loads(line) for line in (tmp_path / "filtered_out.jsonl").read_text().splitlines()]
    assert len(records) + len(dropped) == 16 and all(d["filter"]["rule"] == "identical" for d in dropped)
    assert all(r["chosen"].startswith("I see ") and r["filter"]["reason"] == "post-filter disabled" for r in records)
    irrelevant = [r for r in records if r["manipulation"] == "irrelevant"]
    assert irrelevant and all(len(r["captions"]) == 4 and r["captions"][0]["text"] for r in irrelevant)
    sent = [r for r in scripted_server.requests[logged:] if r["model"] == "scripted-vlm"]
    sides = {len(r[side]) for r in records + dropped for side in ("chosen_frames", "rejected_frames")}
    assert len(sent) == 32 and all(r["status"] == 200 and len(r["video_frames"]) == 1 for r in sent)
    assert {r["video_frames"][0] for r in sent} == sides
    assert all(r["mm_processor_kwargs"]["do_sample_frames"] is False and r["mm_processor_kwargs"]["fps"] > 0
               for r in sent)


def test_truncated_answers_are_dropped_and_counted_or_kept_without_an_end(reference_run, raw_videos,
                                                                         scripted_server, tmp_path):
    """The tiny random policy rarely reaches its end token within 16 tokens: its answers are cut."""
    kept_run, _ = reference_run  # answer.truncated=keep (synthetic.yaml)
    rows = [json.loads(line) for name in ("preferences.jsonl", "filtered_out.jsonl")
            for line in (kept_run / name).read_text().splitlines()]
    cut = [r for r in rows if r.get("chosen_truncated") or r.get("rejected_truncated")]
    assert cut and all(r.get(f"{side}_truncated", False) in (True, False) for r in rows for side in ("chosen", "rejected"))

    out = tmp_path / "drop"
    _, manifest = run(raw_videos, out, scripted_server, "answer.truncated=drop")
    stats = manifest["counts"]["pairs"]
    dropped = [json.loads(line) for line in (out / "filtered_out.jsonl").read_text().splitlines()]
    truncated = [d for d in dropped if d["filter"]["rule"] == "truncated"]
    assert stats["dropped_truncated"] == len(truncated) == len([r for r in cut if r["chosen"] != r["rejected"]])
    assert stats["with_truncated_answer"] == len(cut)  # identical pairs with a cut answer are counted too
    assert all("max_new_tokens" in d["filter"]["reason"] for d in truncated)
    kept = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert not any(r.get("chosen_truncated") or r.get("rejected_truncated") for r in kept)


def test_an_api_answer_cut_at_max_tokens_is_truncated(raw_videos, scripted_server, tmp_path):
    """The OpenAI-compatible backend reads ``finish_reason == "length"`` as a cut answer."""
    _, manifest = run(raw_videos, tmp_path, scripted_server, "answer.backend=openai", "answer.model=scripted-vlm",
                      "answer.max_new_tokens=3", "postfilter.enabled=false", "answer.truncated=drop")
    pairs = manifest["counts"]["pairs"]
    assert pairs["dropped_truncated"] > 0 and pairs["kept"] == 0
    assert pairs["dropped_truncated"] + pairs["identical_answers"] == pairs["candidates"]


@pytest.mark.parametrize("stage, change", [("caption", "caption.max_tokens=100"),
                                           ("questions", "questions.per_segment=1"),
                                           ("answer", "answer.backend=openai answer.model=scripted-vlm"),
                                           ("postfilter", "postfilter.max_tokens=200")])
def test_an_unreachable_endpoint_stops_the_stage_that_needs_it(reference_run, raw_videos, scripted_server, tmp_path,
                                                               stage, change):
    """The stage whose items must be made again checks its endpoint first; the stages before it are cached
    and check nothing. The run stops with one message, and the last complete run's files stand."""
    out = tmp_path / "copy"
    shutil.copytree(reference_run[0], out)
    before = outputs(out)
    url = unreachable().base_url
    with pytest.raises(TPOError) as stopped:
        run(raw_videos, out, scripted_server, *change.split(), f"{stage}.base_url={url}")
    assert str(stopped.value) == (f"the {stage} stage's endpoint {url} cannot be reached (connection refused); "
                                  f"start the server or set api.base_url (or {stage}.base_url)")
    assert sum(scripted_server.served.values()) == 0 and outputs(out) == before


def test_local_answers_and_cached_stages_need_no_endpoint(reference_run, raw_videos, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference_run[0], out)
    _, manifest = run(raw_videos, out, unreachable(), "answer.max_new_tokens=8", "postfilter.enabled=false")
    computed = items(manifest, "computed")
    assert computed["answer"] == 32 and computed["caption"] == computed["questions"] == 0
