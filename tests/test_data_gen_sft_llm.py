"""The SFT_LLM baseline's file (paper Table 2): the LLM answers each pair's question from its captions, and the
kept pairs' answers are written to preferences_sft_llm.jsonl, one record per record of preferences.jsonl."""

import hashlib
import json
import shutil
import sqlite3

import lightning as L
import pytest

from data_gen.config import SftLlmConfig, load_config
from data_gen.pipeline import Pipeline
from data_gen.scripted_server import answer_from_captions, prompt_text, template_values
from tpo.data.datamodule import PreferenceDataModule
from tpo.data.records import read_records
from tpo.module import TPOModule

from data_gen_support import CONFIG, REPO, config, items, outputs, run

SFT = "preferences_sft_llm.jsonl"


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sft_requests(server):
    return [r for r in server.requests if r["model"] == "scripted-sft-llm"]


def _copy(reference_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference_run[0], out)
    return out


def test_one_llm_answered_record_per_kept_record(raw_videos, scripted_server, tmp_path):
    """Every pair is asked once, with its question and the captions the question writer saw; each kept record
    has a twin whose chosen answer is the LLM's reply to that prompt and whose other fields are the pair's."""
    replies = {}

    def numbered(request):  # a reply that names the prompt it answers (by hash: requests come concurrently)
        prompt = prompt_text(request)
        replies[prompt] = reply = f"Answer {hashlib.sha256(prompt.encode()).hexdigest()[:12]}: " \
                                  f"{answer_from_captions(request)}"
        return reply

    scripted_server.scripts["scripted-sft-llm"] = numbered
    out = tmp_path / "out"
    _, manifest = run(raw_videos, out, scripted_server)
    kept, sft = _rows(out / "preferences.jsonl"), _rows(out / SFT)
    dropped = _rows(out / "filtered_out.jsonl")
    asked = _sft_requests(scripted_server)
    assert len(asked) == len(kept) + len(dropped) == 16 and all(r["status"] == 200 for r in asked)
    assert manifest["counts"]["sft_llm"] == {"asked": 16, "failed": 0, "written": len(kept)}
    assert [r["id"] for r in sft] == [r["id"] for r in kept] and 0 < len(kept) < 16
    by_prompt = {reply: prompt for prompt, reply in replies.items()}
    for pair, twin in zip(kept, sft):
        fields = template_values(SftLlmConfig.prompt, by_prompt[twin["chosen"]])
        assert fields["question"] == pair["question"]
        assert [line.split("] ", 1)[1] for line in fields["captions"].splitlines()] == \
            [c["text"] for c in pair["captions"]]  # the S_a captions, as the question writer read them
        assert twin["chosen_source"] == "llm" and twin["provenance"] == {**pair["provenance"], "sft_llm": "scripted-sft-llm"}
        assert "filter" not in twin and not twin.get("chosen_truncated")
        same = {k: v for k, v in pair.items() if k not in ("chosen", "chosen_truncated", "filter", "provenance")}
        assert {k: twin[k] for k in same} == same  # rejected, video, frames, manipulation, question...
    records, bad = read_records(out / SFT)  # the record format, video_root from the manifest beside it
    assert not bad and len(records) == len(kept)


def test_a_rerun_makes_no_call_and_a_cut_run_asks_only_what_is_missing(reference_run, raw_videos, scripted_server,
                                                                       tmp_path):
    out = _copy(reference_run, tmp_path)
    before = (out / SFT).read_text()
    assert before.strip()
    _, manifest = run(raw_videos, out, scripted_server)
    assert sum(scripted_server.served.values()) == 0 and items(manifest, "computed")["sft_llm"] == 0
    with sqlite3.connect(out / "cache.sqlite") as db:  # a run killed in the middle of the stage
        db.execute("DELETE FROM results WHERE stage='sft_llm' AND rowid IN "
                   "(SELECT rowid FROM results WHERE stage='sft_llm' LIMIT 5)")
    _, manifest = run(raw_videos, out, scripted_server)
    assert items(manifest, "computed") == {**{s: 0 for s in manifest["run"]["items"]}, "sft_llm": 5}
    assert len(_sft_requests(scripted_server)) == sum(scripted_server.served.values()) == 5
    assert (out / SFT).read_text() == before and outputs(out) == outputs(reference_run[0])


def test_a_changed_setting_reruns_only_this_stage_and_the_post_filter_none_of_it(reference_run, raw_videos,
                                                                                 scripted_server, tmp_path):
    out = _copy(reference_run, tmp_path)
    _, manifest = run(raw_videos, out, scripted_server, "sft_llm.max_tokens=100")
    assert items(manifest, "computed") == {**{s: 0 for s in manifest["run"]["items"]}, "sft_llm": 16}
    assert [r["max_tokens"] for r in scripted_server.requests] == [100] * 16
    assert outputs(out) == outputs(reference_run[0])
    _, manifest = run(raw_videos, out, scripted_server, "sft_llm.max_tokens=100", "postfilter.enabled=false")
    assert items(manifest, "computed")["sft_llm"] == 0  # every pair was asked, not only the kept ones
    assert len(_rows(out / SFT)) == len(_rows(out / "preferences.jsonl")) > len(_rows(reference_run[0] / SFT))


def test_failures_are_recorded_and_counted(reference_run, raw_videos, scripted_server, tmp_path):
    def refuse_some(request):  # the questions about the start: a 400 for irrelevant segments (4 frames), else empty
        fields = template_values(SftLlmConfig.prompt, prompt_text(request))
        if "start" not in fields["question"]:
            return answer_from_captions(request)
        if len(fields["captions"].splitlines()) == 4:
            raise ValueError("refused")
        return ""  # malformed: re-asked twice, then a failure

    scripted_server.scripts["scripted-sft-llm"] = refuse_some
    out = tmp_path / "out"
    _, manifest = run(raw_videos, out, scripted_server)
    failures = [f for f in _rows(out / "failures.jsonl") if f["stage"] == "sft_llm"]
    reasons = sorted(f["reason"].split(":")[0] for f in failures)
    assert reasons == ["malformed output after 3 attempts"] * 4 + ["request rejected (400)"] * 4
    assert manifest["run"]["calls"]["sft_llm/retries_malformed"] == 8
    kept = _rows(out / "preferences.jsonl")
    failed = {f["id"] for f in failures}
    assert manifest["counts"]["sft_llm"] == {"asked": 16, "failed": 8, "written": len(kept) - len(failed & {
        r["id"] for r in kept})}
    assert [r["id"] for r in _rows(out / SFT)] == [r["id"] for r in kept if r["id"] not in failed]
    assert (out / "preferences.jsonl").read_text() == (reference_run[0] / "preferences.jsonl").read_text()


def test_off_makes_no_call_and_an_empty_file(raw_videos, scripted_server, tmp_path):
    _, manifest = run(raw_videos, tmp_path, scripted_server, "sft_llm.enabled=false")
    assert not _sft_requests(scripted_server) and (tmp_path / SFT).read_text() == ""
    assert manifest["counts"]["sft_llm"] == {"asked": 0, "failed": 0, "written": 0}
    plan = Pipeline(config(raw_videos, tmp_path / "plan", scripted_server), progress=False).dry_run()
    assert plan["sft_llm"] == {"calls_at_most": 16}


def test_settings_default_to_the_question_writer():
    cfg = load_config(None, ["videos=v", "output_dir=o", "answer.model=m", "answer.family=llava_onevision",
                             "questions.model=writer", "questions.base_url=http://host:1/v1"])
    assert cfg.sft_llm.enabled and (cfg.sft_llm.model, cfg.sft_llm.base_url) == ("writer", "http://host:1/v1")
    paper = load_config(str(REPO / "data_gen/configs/paper.yaml"), ["videos=v", "output_dir=o"])
    assert paper.sft_llm.enabled and paper.sft_llm.model == paper.questions.model == "gpt-4o-mini"
    assert load_config(str(CONFIG), ["videos=v", "output_dir=o"]).sft_llm.model == "scripted-sft-llm"


@pytest.mark.parametrize("question, reply", [
    ("What colour is the shape at the start of the video?", "The shape is red."),
    ("What colour is the shape at the end of the video?", "The shape is blue."),
    ("How many times does the shape change colour?", "The shape changes colour 1 time."),
    ("Is there a green shape in the video?", "No, the shape is red then blue."),
    ("Where does the red shape move?", "It moves from the top left to the middle centre."),
])
def test_the_scripted_answerer_reads_the_captions(question, reply):
    from string import Template

    from data_gen.config import prompt_template

    captions = ("[0.0s] A red shape at the top left of a dark background.\n"
                "[0.5s] A blue shape at the middle centre of a dark background.")
    prompt = Template(prompt_template(SftLlmConfig.prompt)).substitute(captions=captions, question=question)
    assert answer_from_captions({"messages": [{"role": "user", "content": prompt}]}) == reply


def test_the_file_trains_as_sft(reference_run, tmp_path):
    """beta 0 (the SFT recipes, lightning_configs/*_sft_llm.yaml): only the LLM's answers carry a gradient."""
    L.seed_everything(0)
    dm = PreferenceDataModule(str(reference_run[0] / SFT), batch_size=2)
    module = TPOModule("builtin:tiny-llava_onevision", "llava_onevision", beta=0.0, alpha=1.0, lr=1e-3)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=2, accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, logger=False, enable_checkpointing=False)
    trainer.fit(module, dm)
    assert trainer.global_step == 2 and trainer.callback_metrics["train/loss"].isfinite()
