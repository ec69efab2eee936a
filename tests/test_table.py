"""Table 2's rows: the SFT baseline recipes beside the TPO ones, and ``tpo evaluate table``, which lays
several evaluated models' ``summary.json`` out as the paper's Table 2 (Markdown, CSV, a bar chart) and
refuses rows that were asked differently.

The summaries are real: one model (the tiny built-in LLaVA-OneVision) is evaluated on a few clips laid out
as each benchmark's files, and the other rows are copies of its summaries with other numbers or settings.
"""

import copy
import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tpo.evaluate import table
from tpo.evaluate.__main__ import main

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["red", "green", "blue", "yellow"]
# Table 2's LongVA-7B and LongVA-TPO rows: LongVideoBench, MLVU, Video-MME (short, medium, long, average) w/o | w/
LONGVA = (51.3, 58.8, (61.1, 50.4, 46.2, 52.6), (61.6, 53.6, 47.6, 54.3))
LONGVA_TPO = (54.2, 61.7, (63.1, 54.8, 47.4, 55.1), (66.6, 55.3, 47.9, 56.6))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, raw_videos):
    """One model evaluated on every column, as ``RUN/<benchmark>/summary.json`` (lmms-eval protocol)."""
    root = tmp_path_factory.mktemp("table")
    clips = sorted(raw_videos.glob("*.mp4"))
    mme = [{"question_id": f"mme{i}", "videoID": clip.stem, "question": "Which colour comes first?",
            "options": [f"{'ABCD'[k]}. {o}" for k, o in enumerate(OPTIONS)], "answer": "A", "duration": duration,
            "task_type": "Temporal Perception"} for i, (clip, duration) in enumerate(zip(clips, table.DURATIONS))]
    lvb = [{"id": f"lvb{i}", "video_path": clip.name, "question": "Which colour comes first?", "candidates": OPTIONS,
            "correct_choice": 1, "duration_group": 15, "question_category": "TOS"} for i, clip in enumerate(clips[:2])]
    (root / "mlvu" / "json").mkdir(parents=True)
    (root / "mlvu" / "video" / "1_plotQA").mkdir(parents=True)
    for clip in clips[:2]:
        (root / "mlvu" / "video" / "1_plotQA" / clip.name).symlink_to(clip)
    mlvu = [{"video": clip.name, "question": "Which colour comes first?", "candidates": OPTIONS, "answer": "red",
             "question_type": "plotQA"} for clip in clips[:2]]
    (root / "videomme.json").write_text(json.dumps(mme))
    (root / "lvb_val.json").write_text(json.dumps(lvb))
    (root / "mlvu" / "json" / "1_plotQA.json").write_text(json.dumps(mlvu))
    (root / "subtitle").mkdir()  # no .srt: "No subtitles available", still the "w/ subs" setting
    run = root / "base"
    common = ["--model", "builtin:tiny-llava_onevision", "--num-frames", "4", "--device", "cpu", "--dtype", "float32",
              "--batch-size", "4"]
    subtitles = ["--subtitles", root / "subtitle"]
    for out, benchmark, data, videos, extra in [
            ("longvideobench", "longvideobench", root / "lvb_val.json", raw_videos, []),
            ("mlvu", "mlvu", root / "mlvu" / "json", root / "mlvu" / "video", []),
            ("videomme", "videomme", root / "videomme.json", raw_videos, []),
            ("videomme_w_subtitle", "videomme", root / "videomme.json", raw_videos, subtitles)]:
        argv = ["mcq", "--benchmark", benchmark, "--data", data, "--videos", videos, "--out", run / out, *common]
        assert main([str(a) for a in argv + extra]) == 0
    return run


def _copy(run: Path, to: Path, numbers=LONGVA, drop=(), **changes) -> Path:
    """``run``'s summaries with ``numbers`` (as LONGVA) and ``changes`` (``{column: {key: value}}``, or
    ``key=value`` for every column); ``drop``: columns left out."""
    for folder in sorted(p for p in run.iterdir() if p.is_dir()):
        if folder.name in drop:
            continue
        summary = json.loads((folder / "summary.json").read_text())
        lvb, mlvu, without, with_subs = numbers
        source = folder.name
        if source == "longvideobench":
            summary["accuracy"] = lvb / 100
        elif source == "mlvu":
            summary["macro_accuracy"] = mlvu / 100
        else:
            values = without if source == "videomme" else with_subs
            for duration, value in zip(table.DURATIONS, values):
                summary["by_duration"][duration]["accuracy"] = value / 100
            summary["accuracy"] = values[3] / 100
        summary.update({k: v for k, v in changes.items() if not isinstance(v, dict)})
        summary.update(changes.get(source, {}))
        (to / source).mkdir(parents=True)
        (to / source / "summary.json").write_text(json.dumps(summary, indent=2))
    return to


def _cells(markdown: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    return {r[0]: r[1:] for r in rows}


def test_the_real_summaries_hold_what_the_table_reads(evaluated):
    for folder in evaluated.iterdir():
        summary = json.loads((folder / "summary.json").read_text())
        needed = {*table.REQUIRED, *table.SETTINGS, *table.REQUIRED_FOR.get(summary["benchmark"], ()),
                  *table.REQUIRED_FOR["lmms-eval"]}
        assert needed <= set(summary), (folder.name, needed - set(summary))
    row = table.read_run(str(evaluated), "base")
    assert set(row.summaries) == set(table.SOURCES) and set(row.summaries["videomme"][1]["by_duration"]) == {
        "short", "medium", "long"}


def test_two_rows_as_table_2_markdown_csv_and_chart(evaluated, tmp_path, capsys):
    base = _copy(evaluated, tmp_path / "longva")
    tpo = _copy(evaluated, tmp_path / "runs" / "longva_tpo", LONGVA_TPO)
    out = tmp_path / "out"
    assert main(["table", str(base), str(tpo), "--out", str(out), "--names", "LongVA-7B,LongVA-TPO"]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "table.md").read_text()
    assert printed.startswith(markdown) and f"wrote {out / 'table.png'}" in printed
    cells = _cells(markdown)
    assert cells["Model"] == table.HEADERS[1:]
    assert cells["LongVA-7B"] == ["51.3", "58.8", "61.1/61.6", "50.4/53.6", "46.2/47.6", "52.6/54.3"]
    assert cells["LongVA-TPO"] == ["54.2", "61.7", "63.1/66.6", "54.8/55.3", "47.4/47.9", "55.1/56.6"]
    assert "Video-MME: w/o subs / w/ subs" in markdown and table.DASH not in markdown
    settings = "LongVideoBench: 4 frames, 2 questions, protocol lmms-eval 0.7.3 (default prompt), scoring generate"
    assert settings in markdown
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["model"] for r in rows] == ["LongVA-7B", "LongVA-TPO"] and rows[1]["run"] == str(tpo)
    assert rows[0]["videomme_long_w_subs"] == "47.6" and rows[1]["mlvu_m_avg"] == "61.7"
    assert list(rows[0])[2:] == [name for name, _, _ in table.COLUMNS]
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without --names, the folders' names; without --out, printed only
    assert main(["table", str(base), str(tpo)]) == 0
    assert {"longva", "longva_tpo"} <= set(_cells(capsys.readouterr().out))


def test_missing_cells_are_dashes_with_a_footnote(evaluated, tmp_path, capsys):
    full = _copy(evaluated, tmp_path / "full")
    part = _copy(evaluated, tmp_path / "part", LONGVA_TPO, drop=("mlvu", "videomme_w_subtitle"),
                 videomme={"by_duration": {"short": {"accuracy": 0.631, "correct": 1, "scored": 1}}, "accuracy": 0.631})
    out = tmp_path / "out"
    assert main(["table", str(full), str(part), "--out", str(out)]) == 0
    markdown = (out / "table.md").read_text()
    assert _cells(markdown)["part"] == ["54.2", "–", "63.1/–", "–", "–", "63.1/–"]
    assert f"- –: no MLVU summary.json in {part}" in markdown
    assert f"- –: no Video-MME w/ subs summary.json in {part}" in markdown
    assert f"- –: no medium/long questions answered in {part}'s Video-MME w/o subs" in markdown
    row = next(r for r in csv.DictReader((out / "table.csv").open()) if r["model"] == "part")
    assert row["mlvu_m_avg"] == row["videomme_short_w_subs"] == row["videomme_long_wo_subs"] == ""
    assert row["videomme_short_wo_subs"] == "63.1" and (out / "table.png").is_file()


def test_rows_asked_differently_are_refused_in_one_line(evaluated, tmp_path, capsys):
    a = _copy(evaluated, tmp_path / "a")
    b = _copy(evaluated, tmp_path / "b", longvideobench={"num_frames": 128})
    c = _copy(evaluated, tmp_path / "c")
    assert main(["table", str(a), str(b), str(c), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the rows were evaluated differently, so their numbers do not compare: on LongVideoBench: "
                   f"num_frames 4 ({a}, {c}) vs 128 ({b}); evaluate every row the same way\n")
    assert not (tmp_path / "out").exists()

    # our protocol on every benchmark: the protocol and the reading are named, not what follows from them
    ours = {"protocol": "tpo", "reading": "tpo", "frame_rule": "segment-centres"}
    d = _copy(evaluated, tmp_path / "d", **ours)
    for folder in d.iterdir():
        summary = json.loads((folder / "summary.json").read_text())
        for key in ("lmms_eval_version", "prompt_variant"):
            del summary[key]
        summary["max_new_tokens"] = 16
        (folder / "summary.json").write_text(json.dumps(summary))
    assert main(["table", str(a), str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lmms_eval_version" not in err and "max_new_tokens" not in err
    assert (f"on LongVideoBench: protocol 'lmms-eval' ({a}) vs 'tpo' ({d}); reading 'lmms-eval' ({a}) vs 'tpo' ({d}) "
            "(and 3 other benchmark(s)); evaluate every row the same way\n") in err

    # a scoring or a prompt variant of its own, on one benchmark
    e = _copy(evaluated, tmp_path / "e", videomme_w_subtitle={"prompt_variant": "llava_vid"})
    assert main(["table", str(a), str(e)]) == 2
    assert f"on Video-MME w/ subs: prompt_variant 'default' ({a}) vs 'llava_vid' ({e});" in capsys.readouterr().err


def test_bad_runs_are_named(evaluated, tmp_path, capsys):
    a = _copy(evaluated, tmp_path / "a")
    (tmp_path / "empty").mkdir()
    twice = _copy(evaluated, tmp_path / "twice", drop=("videomme_w_subtitle",))
    shutil.copytree(twice / "videomme", twice / "videomme_again")
    broken = _copy(evaluated, tmp_path / "broken", drop=("mlvu", "videomme", "videomme_w_subtitle"))
    summary = json.loads((broken / "longvideobench" / "summary.json").read_text())
    del summary["num_frames"]
    (broken / "longvideobench" / "summary.json").write_text(json.dumps(summary))
    cases = [([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such folder"),
             ([str(tmp_path / "empty")], "no summary.json of LongVideoBench, MLVU or Video-MME"),
             ([str(twice)], f"{twice} holds two Video-MME w/o subs summaries"),
             ([str(broken)], "summary.json: no 'num_frames'"),
             ([str(a), "--names", "x,y"], "--names gives 2 name(s) for 1 RUN(s)")]
    for argv, message in cases:
        assert main(["table", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)


def test_a_jsonl_summary_is_left_out(evaluated, tmp_path, capsys):
    run = _copy(evaluated, tmp_path / "run", drop=("mlvu",))
    other = copy.deepcopy(json.loads((run / "videomme" / "summary.json").read_text()))
    other.update(benchmark="jsonl", protocol="tpo")
    (run / "summary.json").write_text(json.dumps(other))
    assert main(["table", str(run)]) == 0
    assert _cells(capsys.readouterr().out)["run"][1] == "–"


SFT_RECIPES = sorted(p.name for p in (REPO / "lightning_configs").glob("*_7b_sft_*.yaml"))


@pytest.mark.parametrize("recipe", SFT_RECIPES)
def test_an_sft_recipe_is_its_tpo_recipe_with_the_dpo_term_off(recipe):
    """SFT_self and SFT_LLM (Table 2) train as TPO does (the paper's batch, epoch, data size; the TPO
    recipe's lr), on the chosen answers only: beta 0, alpha 1; SFT_LLM takes its file from --data.path."""
    sft = yaml.safe_load((REPO / "lightning_configs" / recipe).read_text())
    tpo = yaml.safe_load((REPO / "lightning_configs" / recipe.replace(recipe[recipe.index("sft"):], "tpo.yaml"))
                         .read_text())
    assert sft["model"].pop("beta") == 0 and sft["model"].pop("alpha") == 1
    for part in ("beta", "alpha"):
        tpo["model"].pop(part)
    assert sft["trainer"].pop("default_root_dir") == f"runs/{recipe.removesuffix('.yaml')}"
    tpo["trainer"].pop("default_root_dir")
    path, tpo_path = sft["data"].pop("path"), tpo["data"].pop("path")
    assert path == (tpo_path if recipe.endswith("sft_self.yaml") else "???")
    assert sft == tpo


def test_the_recipes_cover_table_2():
    assert SFT_RECIPES == ["llava_video_7b_sft_llm.yaml", "llava_video_7b_sft_self.yaml", "longva_7b_sft_llm.yaml",
                           "longva_7b_sft_self.yaml"]
