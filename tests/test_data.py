import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tpo.two_pass import two_pass_collate
from tpo.data.datamodule import PairSelection, PreferenceDataModule, select_pairs, split_by_video
from tpo.data.frames import read_frames, uniform_frame_indices
from tpo.data.records import SCHEMA_VERSION, PreferenceRecord, RecordError, read_records
from tpo.models import IGNORE_INDEX, get_adapter
from tpo.module import TPOModule

REPO = Path(__file__).resolve().parents[1]


def test_uniform_frame_indices():
    assert uniform_frame_indices(32, 4) == [4, 12, 20, 28]
    assert uniform_frame_indices(3, 5) == [0, 0, 1, 2, 2]  # int((i + 0.5) * 3 / 5)


def test_reads_exactly_the_requested_frames(pref_file):
    records, _ = read_records(pref_file)
    frames = read_frames(records[0].video_path, [0, 31, 5])
    assert frames.shape == (3, 64, 64, 3) and frames.dtype.name == "uint8"
    # The synthetic clip draws a different event per 8-frame segment: frame 0 and 31 differ.
    assert abs(frames[0].astype(int) - frames[1].astype(int)).max() > 50


def test_validation_split_holds_out_whole_videos(pref_file):
    records, _ = read_records(pref_file)
    train, val = split_by_video(records, 0.25, seed=3)
    assert len(train) + len(val) == len(records)
    assert {r.video_path for r in train}.isdisjoint({r.video_path for r in val})
    assert len({r.video_path for r in val}) == 2  # 25% of 8 videos
    assert split_by_video(records, 0.25, seed=3)[1] == val  # deterministic


@pytest.mark.parametrize("fraction,size", [(1.0, 10), (0.8, 10), (0.5, 16), (0.2, 10), (0.0, 10), (None, 7)])
def test_mix_ratio_and_size_are_config_changes(pref_file, fraction, size):
    records, _ = read_records(pref_file)
    chosen = select_pairs(records, fraction, size, seed=0)
    assert len(chosen) == size and len({r.id for r in chosen}) == size
    if fraction is not None:
        counts = Counter(r.manipulation for r in chosen)
        assert counts["irrelevant"] == round(size * fraction)
        assert counts["incomplete"] == size - round(size * fraction)


def _unbalanced(records, irrelevant=3):
    """All the incomplete pairs and only ``irrelevant`` irrelevant ones."""
    kept = [r for r in records if r.manipulation == "irrelevant"][:irrelevant]
    return sorted(kept + [r for r in records if r.manipulation == "incomplete"], key=lambda r: r.line)


def test_max_pairs_is_a_cap_a_smaller_dataset_trains_on_all_its_pairs(pref_file):
    records, _ = read_records(pref_file)
    for fraction in (None, 0.5):
        chosen = select_pairs(records, fraction, 10_000, seed=0)  # the 7B recipes' max_pairs
        assert sorted(r.id for r in chosen) == sorted(r.id for r in records)
    selection = PairSelection.of(chosen, len(records), 10_000, 0.5)
    assert str(selection) == ("32 of 32 available (max_pairs 10000); 16 irrelevant + 16 incomplete = "
                              "irrelevant fraction 0.5")


def test_a_mix_the_data_cannot_meet_uses_the_closest_and_says_so(pref_file):
    records = _unbalanced(read_records(pref_file)[0])  # 3 irrelevant, 16 incomplete
    chosen = select_pairs(records, 0.5, None, seed=1)
    assert len(chosen) == 19 and Counter(r.manipulation for r in chosen)["irrelevant"] == 3  # every pair is used
    selection = PairSelection.of(chosen, len(records), None, 0.5)
    assert selection.off_mix and selection.metrics()["data/irrelevant_fraction"] == 3 / 19
    assert str(selection) == "19 of 19 available; 3 irrelevant + 16 incomplete = irrelevant fraction 0.158 (asked 0.5)"
    capped = Counter(r.manipulation for r in select_pairs(records, 0.5, 8, seed=1))
    assert capped == {"irrelevant": 3, "incomplete": 5}  # 4:4 asked: all 3 irrelevant, the rest incomplete
    assert Counter(r.manipulation for r in select_pairs(records, 1.0, 5, seed=1)) == {"irrelevant": 3, "incomplete": 2}


def test_where_the_data_allows_the_ask_closest_and_exact_pick_the_same_pairs(pref_file):
    records = _unbalanced(read_records(pref_file)[0])
    for fraction, size in ((0.5, 6), (0.2, 15), (0.0, 16), (None, 19)):
        assert (select_pairs(records, fraction, size, seed=2)
                == select_pairs(records, fraction, size, seed=2, selection="exact"))


def test_exact_selection_refuses_what_the_data_cannot_meet_and_names_the_way_out(pref_file):
    records, _ = read_records(pref_file)
    with pytest.raises(ValueError, match=r"needs 20 irrelevant pairs; only 16 .*--data\.selection closest"):
        select_pairs(records, 1.0, 20, seed=0, selection="exact")
    with pytest.raises(ValueError, match=r"max_pairs=40 but only 32 .*--data\.selection closest"):
        select_pairs(records, None, 40, seed=0, selection="exact")
    with pytest.raises(ValueError, match="max_pairs must be at least 1, got 0"):  # not a silent run of 0 steps
        select_pairs(records, None, 0, seed=0)


def test_the_fit_summary_and_the_logs_give_the_pairs_and_mix_used(pref_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records, _ = read_records(pref_file)
    path = tmp_path / "prefs.jsonl"
    lines = pref_file.read_text().splitlines()
    path.write_text("".join(lines[r.line - 1] + "\n" for r in _unbalanced(records)))
    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs/demo.yaml"),  # 0.5 asked
           "--trainer.default_root_dir", str(root), "--data.path", str(path), "--data.video_root",
           str(pref_file.parent), "--data.val_fraction", "0", "--data.max_pairs", "10000",
           "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("  training pairs: 19 of 19 available (max_pairs 10000); 3 irrelevant + 16 incomplete = "
            "irrelevant fraction 0.158 (asked 0.5)") in done.stdout.splitlines()
    assert "training on the closest mix the data allows" in done.stderr
    events = EventAccumulator(str(root / "lightning_logs" / "version_0"))
    events.Reload()
    logged = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("data/")}
    assert logged == pytest.approx({"data/pairs": 19, "data/available_pairs": 19, "data/irrelevant_pairs": 3,
                                    "data/incomplete_pairs": 16, "data/irrelevant_fraction": 3 / 19})


def test_collated_labels_cover_response_tokens_only(pref_file):
    adapter = get_adapter("qwen2_5_vl")
    processor = adapter.load_processor("builtin:tiny-qwen2_5_vl")
    dm = PreferenceDataModule(str(pref_file), batch_size=2)
    dm.connect(TPOModule("builtin:tiny-qwen2_5_vl", "qwen2_5_vl"))
    dm.setup("fit")
    items = [dm.train_set[0], dm.train_set[1]]
    batch = two_pass_collate(adapter, processor, items)
    ids, labels, mask = batch["inputs"]["input_ids"], batch["labels"], batch["inputs"]["attention_mask"]
    assert ids.shape[0] == 4 and batch["ids"] == [items[0]["id"], items[1]["id"]]
    for row, (item, side) in enumerate([(items[0], "chosen"), (items[1], "chosen"),
                                        (items[0], "rejected"), (items[1], "rejected")]):
        response = adapter.response_ids(processor, item[side])
        labelled = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert labelled == response  # every response token, the end-of-turn token included
        length = int(mask[row].sum())
        assert ids[row, length - len(response):length].tolist() == response
        assert (labels[row, : length - len(response)] == IGNORE_INDEX).all()
    # chosen and rejected rows of a pair share one prompt and one video
    assert torch.equal(batch["inputs"]["video_grid_thw"][:2], batch["inputs"]["video_grid_thw"][2:])


def test_a_truncated_answer_gets_no_end_of_turn_token(pref_file):
    """Training must not teach the model to stop where a generation was merely cut off."""
    import numpy as np

    from tpo.data.collate import SharedPrefixCollator
    from tpo.data.frames import Clip, VideoInfo, frame_metadata
    from tpo.models import get_adapter

    adapter = get_adapter("llava_onevision")
    processor = adapter.load_processor("builtin:tiny-llava_onevision")
    eos = processor.tokenizer.eos_token_id
    clip = Clip(np.zeros((4, 32, 32, 3), dtype=np.uint8), frame_metadata(VideoInfo(40, 10.0), [0, 10, 20, 30]))
    item = {"id": "a", "question": "What happens?", "chosen": "The red square moves", "rejected": "Nothing.",
            "clip": clip}
    collate = SharedPrefixCollator(adapter, processor)
    for flags, chosen_ends in (({}, True), ({"chosen_truncated": True}, False)):
        batch = collate([{**item, **flags}])
        p, c, r = batch["segments"][0].tolist()
        ids = batch["inputs"]["input_ids"][0]
        assert (ids[p + c - 1].item() == eos) == chosen_ends
        assert ids[p + c + r - 1].item() == eos  # the rejected answer was complete


def test_training_warns_when_data_gen_prompted_otherwise(tmp_path, caplog):
    import json

    from tpo.data.datamodule import warn_if_prompted_otherwise

    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"answer": {"backend": "local",
                                                                               "time_instruction": False}}}))
    warn_if_prompted_otherwise(tmp_path / "preferences.jsonl", time_instruction=False)
    assert "did not answer" not in caplog.text
    warn_if_prompted_otherwise(tmp_path / "preferences.jsonl", time_instruction=True)
    assert "answer.time_instruction=False but training uses model.time_instruction=True" in caplog.text


def test_record_round_trips_through_its_json_form(pref_file):
    line = json.loads(pref_file.read_text().splitlines()[0])
    record = PreferenceRecord.from_json({**line, "note": "kept"})
    assert record.to_json() == {**line, "note": "kept", "schema_version": SCHEMA_VERSION}
    assert record.extra == {"note": "kept"} and record.manipulation in ("irrelevant", "incomplete")
    legacy = {k: v for k, v in line.items() if k != "schema_version"}
    # files written before the version had its own field kept it in the provenance
    assert PreferenceRecord.from_json({**legacy, "provenance": {"schema_version": 1}}).schema_version == 1
    with pytest.raises(RecordError, match="schema_version 9"):
        PreferenceRecord.from_json({**legacy, "provenance": {"schema_version": 9}})
    with pytest.raises(RecordError, match="'chosen_frames' must hold only non-negative integers"):
        PreferenceRecord(**{**legacy, "chosen_frames": [-1]})
