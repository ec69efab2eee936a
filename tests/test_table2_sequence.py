"""The README's Table 2 sequence runs as written: its bash block, in a fresh folder, at a reduced setting.

Everything the block reads is built here, small: LongVA in its own format (tests/fixtures/longva), the
authors' release (a dataset.csv in their layout and its videos), Video-MME, LongVideoBench and MLVU laid out
as their authors distribute them, and the scripted LLM server standing in for GPT-4o-mini. The block's
variables make the rest small: one CPU process, 2 training steps, 4 frames.
"""

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
LONGVA = REPO / "tests" / "fixtures" / "longva" / "checkpoint"  # a tiny LongVA in LongVA's own layout
ROWS = ["LongVA-7B", "+ SFT_Self", "+ SFT_LLM", "LongVA-TPO"]
BENCHMARKS = ["longvideobench", "mlvu", "videomme", "videomme_w_subtitle"]
QUESTION = "Which part of the video shows the first event?"
OPTIONS = ["the first", "the second", "the third", "the fourth"]
# CPU, one process, 2 optimizer steps; the recipes' FSDP2 on 8 GPUs in bf16 is replaced
FIT_ARGS = ("--trainer.accelerator cpu --trainer.devices 1 --trainer.strategy auto --trainer.precision 32-true "
            "--trainer.max_steps 2 --trainer.accumulate_grad_batches 1 --data.num_workers 0")
EVAL_ARGS = "--device cpu --dtype float32 --batch-size 4"


def table2_block() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Reproducing Table 2 (LongVA-7B)"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_block_is_table_2_in_order():
    commands = [line for line in table2_block().splitlines() if line.strip() and not line.startswith("#")]
    order = ["tpo convert longva", "tpo data import --format tpo-official", "tpo data run", "longva_7b_$row.yaml",
             "longva_7b_sft_llm.yaml", "-m tpo.evaluate mcq", "tpo evaluate table"]
    first = [next(i for i, c in enumerate(commands) if step in c) for step in order]
    assert first == sorted(first), first
    assert "preferences_sft_llm.jsonl" in next(c for c in commands if "--data.path $T/data/ours" in c)


def test_the_readme_numbers_are_the_papers():
    """The README's expected rows are Table 2's, as tests/test_table.py holds them for LongVA and LongVA-TPO."""
    from test_table import LONGVA, LONGVA_TPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Reproducing Table 2 (LongVA-7B)"):readme.index("## The paper's effect")]
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
                                  if line.startswith("| "))}
    for name, (lvb, mlvu, without, with_subs) in (("LongVA-7B", LONGVA), ("LongVA-TPO", LONGVA_TPO)):
        assert rows[name] == [str(lvb), str(mlvu), *(f"{a}/{b}" for a, b in zip(without, with_subs))]
    assert set(rows) == {"Model", "LongVA-7B", "+ SFT_Self", "+ SFT_LLM", "+ Hound-DPO†", "LongVA-TPO"}


def _authors_release(root: Path) -> tuple[Path, list[Path]]:
    """``root/dataset.csv`` in the authors' layout (an unnamed index column, ``<image>`` prompts) and its videos:
    synthetic clips of 4 events, 64 frames at 8 fps (the import's 1 fps rule keeps 8 of them)."""
    from tpo.synthetic.world import write_clips

    clips = write_clips(root / "unpacked" / "videos", num_videos=3)
    items = [json.loads(line) for line in (root / "unpacked" / "videos" / "mcq.jsonl").read_text().splitlines()]
    with (root / "dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "prompt", "answer", "chosen", "rejected", "video"])
        for row, item in enumerate(items):
            chosen, rejected = item["options"][item["answer"]], item["options"][item["answer"] - 1]
            writer.writerow([row, f"<image>\n{item['question']}", chosen, chosen, rejected, f"videos/{item['video']}"])
    return root / "unpacked", clips


def _benchmarks(root: Path, clips: list[Path]) -> dict[str, str]:
    """Video-MME, LongVideoBench and MLVU as their authors distribute them, a question or three each."""
    mme, lvb, mlvu = root / "Video-MME", root / "LongVideoBench", root / "MLVU"
    for folder in (mme / "videomme", mme / "data", mme / "subtitle", lvb / "videos", mlvu / "json",
                   mlvu / "video" / "1_plotQA"):
        folder.mkdir(parents=True)
    rows = [{"video_id": f"{i:03d}", "duration": duration, "domain": "Knowledge", "sub_category": "Humanity",
             "url": "", "videoID": clip.stem, "question_id": f"{i:03d}-1", "task_type": "Temporal Perception",
             "question": QUESTION, "options": [f"{'ABCD'[k]}. {o}" for k, o in enumerate(OPTIONS)], "answer": "A"}
            for i, (clip, duration) in enumerate(zip(clips, ("short", "medium", "long")))]
    pq.write_table(pa.Table.from_pylist(rows), mme / "videomme" / "test-00000-of-00001.parquet")
    (mme / "subtitle" / f"{clips[0].stem}.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nA shape moves.\n")
    lvb_items = [{"id": f"lvb{i}", "video_path": clip.name, "question": QUESTION, "candidates": OPTIONS,
                  "correct_choice": 0, "duration_group": 15, "question_category": "TOS"}
                 for i, clip in enumerate(clips[:2])]
    (lvb / "lvb_val.json").write_text(json.dumps(lvb_items))
    mlvu_items = [{"video": clip.name, "question": QUESTION, "candidates": OPTIONS, "answer": OPTIONS[0],
                   "question_type": "plotQA"} for clip in clips[:2]]
    (mlvu / "json" / "1_plotQA.json").write_text(json.dumps(mlvu_items))
    for clip in clips:
        for link in (mme / "data" / clip.name, lvb / "videos" / clip.name, mlvu / "video" / "1_plotQA" / clip.name):
            link.symlink_to(clip)
    return {"VIDEOMME": str(mme), "LVB": str(lvb), "MLVU": str(mlvu)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # minutes: a conversion, an import, data_gen, three fits and sixteen evaluations
def test_the_table_2_sequence_runs_as_written(tmp_path):
    for folder in ("lightning_configs", "data_gen"):  # the repository's relative paths
        (tmp_path / folder).symlink_to(REPO / folder)
    videos, clips = _authors_release(tmp_path / "LongVA-TPO-10k")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGVA": str(LONGVA), "TPO_DATA": str(tmp_path / "LongVA-TPO-10k"),
           "TPO_VIDEOS": str(videos), **_benchmarks(tmp_path / "benchmarks", clips),
           # the offline config (scripted captioner, question writer, judge and SFT_LLM answerer), LongVA answering
           "DATA_GEN_CONFIG": "data_gen/configs/synthetic.yaml",
           "DATA_GEN_ARGS": f"api.base_url=http://127.0.0.1:{port}/v1 --no-progress",
           "FIT_ARGS": FIT_ARGS, "EVAL_ARGS": EVAL_ARGS, "GPUS": "1", "LONG_FRAMES": "4", "MME_FRAMES": "4"}
    # the scripted server in place of the LLM endpoint, answering before the block starts
    server = (f"{sys.executable} -m data_gen.scripted_server --port {port} &\n"
              f"for i in $(seq 120); do {sys.executable} -c \"import socket; socket.create_connection(('127.0.0.1', "
              f"{port}), 1)\" 2>/dev/null && break; sleep 0.5; done\n")
    script = tmp_path / "table2.sh"
    script.write_text("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + server + table2_block())
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])

    t = tmp_path / "runs" / "table2"
    official = [json.loads(line) for line in (t / "data" / "official" / "preferences.jsonl").read_text().splitlines()]
    assert len(official) == 12 and all(r["provenance"]["imported_from"] == "tpo-official" for r in official)
    sft_llm = [json.loads(line) for line in (t / "data/ours/preferences_sft_llm.jsonl").read_text().splitlines()]
    assert sft_llm and all(r["chosen_source"] == "llm" for r in sft_llm)
    for row, data in (("sft_self", "official/preferences.jsonl"), ("tpo", "official/preferences.jsonl"),
                      ("sft_llm", "ours/preferences_sft_llm.jsonl")):
        version = t / "fit" / row / "lightning_logs" / "version_0"
        assert (version / "export" / "config.json").is_file(), row
        assert f"data/{data}" in (version / "config.yaml").read_text(), row
    for row in ("longva", "sft_self", "sft_llm", "tpo"):
        for benchmark in BENCHMARKS:
            summary = json.loads((t / "eval" / row / benchmark / "summary.json").read_text())
            assert summary["num_frames"] == 4 and summary["errors"] == 0, (row, benchmark)

    markdown = (t / "table.md").read_text()
    cells = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
                                   if line.startswith("|"))}
    assert [name for name in cells if name != "Model" and set(name) != {"-"}] == ROWS
    assert all(len(cells[name]) == 6 and "–" not in cells[name] for name in ROWS), markdown
    with (t / "table.csv").open() as f:
        assert [r["model"] for r in csv.DictReader(f)] == ROWS
    assert (t / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
