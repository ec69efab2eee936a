"""Every kind of bad preference record is reported (file, line, problem) before training."""

import json

import lightning as L
import pytest

from tpo.data.datamodule import SKIPPED_FILE, PreferenceDataModule
from tpo.data.records import BadRecordsError, read_records
from tpo.errors import ConfigError
from tpo.module import TPOModule
from tpo.models import get_adapter


def _corrupt(pref_file, tmp_path, edit):
    """Copy the preference file, apply ``edit(records)`` and return the new path."""
    records = [json.loads(line) for line in pref_file.read_text().splitlines()]
    edit(records, tmp_path)
    out = tmp_path / "prefs.jsonl"
    out.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return out


def _bad_video(name, content):
    def edit(records, tmp_path):
        (tmp_path / name).write_bytes(content)
        records[2]["video"] = str(tmp_path / name)
    return edit


CASES = {
    "missing field": (lambda rs, _: rs[2].pop("rejected"), "missing field 'rejected'"),
    "empty response": (lambda rs, _: rs[2].update(chosen="  "), "field 'chosen' is empty"),
    "missing video": (lambda rs, _: rs[2].update(video="videos/nope.mp4"), "video not found"),
    "unreadable video": (_bad_video("broken.mp4", b"this is not a video" * 50), "cannot decode video"),
    "empty video": (_bad_video("empty.mp4", b""), "cannot decode video"),
    "frame beyond video": (lambda rs, _: rs[2].update(frame_indices=[0, 5, 999]), "frame index 999 is beyond"),
    "bad json": (lambda rs, _: rs.__setitem__(2, '{"id": "x", '), "not valid JSON"),
    "bad indices": (lambda rs, _: rs[2].update(frame_indices=[1, -2]), "non-negative integers"),
    "bad manipulation": (lambda rs, _: rs[2].update(manipulation="shuffled"), "'manipulation' is 'shuffled'"),
    "duplicate id": (lambda rs, _: rs[2].update(id=rs[0]["id"]), "duplicate id"),
    "unknown schema version": (lambda rs, _: rs[2].update(schema_version=2), "schema_version 2 is not one this tpo"),
    "bad truncation flag": (lambda rs, _: rs[2].update(chosen_truncated="yes"), "must be true or false"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_reported_with_file_and_line(case, pref_file, tmp_path, video_backend):
    edit, message = CASES[case]
    path = _corrupt(pref_file, tmp_path, edit)
    good, bad = read_records(path, video_root=pref_file.parent)
    assert len(bad) == 1 and bad[0].line == 3
    assert message in bad[0].reason
    assert len(good) == len(pref_file.read_text().splitlines()) - 1
    with pytest.raises(BadRecordsError) as err:
        _datamodule(path, pref_file, "error").setup("fit")
    assert f"{path}:3" in str(err.value) and message in str(err.value)


def _datamodule(path, pref_file, on_bad_record, **settings):
    dm = PreferenceDataModule(path=str(path), video_root=str(pref_file.parent), on_bad_record=on_bad_record,
                              **settings)
    dm.connect(TPOModule("builtin:tiny-llava_onevision", "llava_onevision"))
    return dm


def test_skip_mode_drops_bad_records_and_writes_them_next_to_the_logs(pref_file, tmp_path, video_backend):
    def edit(records, _):
        records[1]["frame_indices"] = [10_000]
        records[4].pop("question")
    path = _corrupt(pref_file, tmp_path, edit)
    dm = _datamodule(path, pref_file, "skip")
    trainer = L.Trainer(default_root_dir=tmp_path / "run", logger=L.pytorch.loggers.TensorBoardLogger(tmp_path / "run"))
    dm.trainer = trainer
    dm.setup("fit")
    total = len(pref_file.read_text().splitlines())
    assert len(dm.train_set) == total - 2
    assert [b.line for b in dm.skipped] == [2, 5]
    skipped = [json.loads(line) for line in (tmp_path / "run" / "lightning_logs" / "version_0" / SKIPPED_FILE).open()]
    assert [s["line"] for s in skipped] == [2, 5]
    assert "beyond" in skipped[0]["reason"] and "missing field 'question'" in skipped[1]["reason"]


def _three_irrelevant(records, _):
    irrelevant = [r for r in records if r["manipulation"] == "irrelevant"][:3]
    records[:] = [r for r in records if r["manipulation"] == "incomplete" or r in irrelevant]


def test_a_mix_the_data_cannot_meet_is_the_closest_or_in_exact_mode_an_error_naming_the_way_out(pref_file, tmp_path):
    path = _corrupt(pref_file, tmp_path, _three_irrelevant)  # 3 irrelevant, 16 incomplete
    closest = _datamodule(path, pref_file, "error", irrelevant_fraction=0.5, max_pairs=10_000)
    closest.setup("fit")
    assert len(closest.train_set) == 19 and (closest.selection.irrelevant, closest.selection.incomplete) == (3, 16)
    exact = _datamodule(path, pref_file, "error", irrelevant_fraction=0.5, selection="exact")
    with pytest.raises(ConfigError, match=r"needs 10 irrelevant pairs; only 3 are available \(data\.selection is "
                                          r"exact; set --data\.selection closest .*--data\.irrelevant_fraction null"):
        exact.setup("fit")


def test_unknown_family_lists_the_supported_ones():
    with pytest.raises(ValueError, match="unknown model family 'llava_13b'.*llava_onevision.*qwen2_5_vl"):
        get_adapter("llava_13b")


def test_checkpoint_of_another_family_is_refused():
    with pytest.raises(ValueError, match="holds a 'llava_onevision' model, but model family 'qwen2_vl'"):
        get_adapter("qwen2_vl").load("builtin:tiny-llava_onevision")
