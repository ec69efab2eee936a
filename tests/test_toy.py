"""The toy world: long clips, moments in them, and questions whose answers follow from the ground truth."""

import json
import random

from toy.niah import write_toy_niah
from toy.world import (FRAMES_PER_EVENT, MOMENT, clip_questions, moment_questions, name, random_events,
                       write_toy_split)
from tpo.data.frames import read_frames
from tpo.evaluate.benchmarks import load_benchmark


def test_questions_are_answered_by_the_events():
    rng = random.Random(0)
    for _ in range(200):
        events = random_events(rng, rng.choice([6, 7, 8]))
        names = [name(e) for e in events]
        assert len({e.colour for e in events}) == len(events)  # an object is named by its colour
        moments = moment_questions(events, rng)
        (after, held_after), (before, held_before), (motion, held_motion) = moments
        for q in [q for q, _ in moments] + clip_questions(events, rng):
            assert len(q["options"]) == 4 == len(set(q["options"]))
        x = after["question"].removeprefix("What appears right after ").removesuffix("?")
        assert after["options"][after["answer"]] == names[names.index(x) + 1]
        assert held_after == [names.index(x), names.index(x) + 1]
        y = before["question"].removeprefix("What appears right before ").removesuffix("?")
        assert before["options"][before["answer"]] == names[names.index(y) - 1]
        assert held_before == [names.index(y) - 1, names.index(y)]
        mover = events[held_motion[0]]
        assert name(mover) in motion["question"] and motion["options"][motion["answer"]] == mover.motion
        # an answer about the wrong moment is in form: the distractors are mostly the clip's own objects
        assert len(set(after["options"]) & set(names)) >= 3
        assert {q["category"] for q, _ in moments} == {MOMENT}
        first, last, count = clip_questions(events, rng)
        assert first["options"][first["answer"]] == names[0] and last["options"][last["answer"]] == names[-1]
        assert count["options"][count["answer"]] == str(len(events))


def test_toy_split_is_a_benchmark_with_window_clips(tmp_path):
    path = write_toy_split(tmp_path, num_videos=3, seed=5)
    loaded = load_benchmark("jsonl", path)
    assert not loaded.bad and len(loaded.items) == 18
    item = loaded.items[0]
    frames = read_frames(item.video, list(range(FRAMES_PER_EVENT * len(item.meta["events"]))))
    assert frames.shape[1:] == (64, 64, 3)
    windows = load_benchmark("jsonl", tmp_path / "window.jsonl").items
    moments = {i.id: i for i in loaded.items if i.category == MOMENT}
    assert len(windows) == 9 and {w.id for w in windows} == set(moments)
    for w in windows:  # the same question, on a clip of only the moment's objects
        long = moments[w.id]
        assert (w.question, w.options, w.answer) == (long.question, long.options, long.answer)
        held = [long.meta["events"][i] for i in w.meta["window"]]
        assert len(read_frames(w.video, list(range(FRAMES_PER_EVENT * len(held))))) == FRAMES_PER_EVENT * len(held)


def test_toy_haystacks_hold_one_needle_at_each_depth(tmp_path):
    path = write_toy_niah(tmp_path, lengths=(4, 8), depths=(0.0, 1.0), per_cell=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and {(r["meta"]["length"], r["meta"]["depth"]) for r in rows} == {
        (16, 0.0), (16, 1.0), (32, 0.0), (32, 1.0)}
    for row in rows:
        assert len(row["frame_indices"]) == row["meta"]["length"]
        assert row["options"][row["answer"]] in ("left", "right", "up", "down")
    assert not load_benchmark("jsonl", path).bad


def test_base_mix_is_mostly_short_clips_with_few_long_moment_questions():
    from toy.base import DESCRIBE, long_clip_examples, short_clip_examples

    rng = random.Random(0)
    short = short_clip_examples(random_events(rng, 2), rng)
    assert [p for p, _ in short][0] == DESCRIBE and len(short) == 5  # describe, two motions, after, before
    long = [p for _ in range(300) for p, _ in long_clip_examples(random_events(rng, 7), rng, moment_share=0.1)]
    moment = sum(p.startswith(("What appears right", "Which way")) for p in long)
    assert long.count(DESCRIBE) == 300 and 40 < moment < 140  # ~10 % of the 900 moment questions


def test_toy_base_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from toy.base import ToyBaseConfig, toy_base_path, train_toy_base

    cfg = ToyBaseConfig(num_clips=4, describe_steps=1, steps=2, batch_size=2, hidden_size=64, num_layers=1)
    first = train_toy_base(tmp_path / "a", cfg)
    second = train_toy_base(tmp_path / "b", cfg)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("TPO_CACHE", str(tmp_path / "cache"))
    path = toy_base_path(cfg)
    built = [p for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]  # no half-built directory left
    assert path.exists() and toy_base_path(cfg) == path and built == [path]


def test_paired_bootstrap_covers_the_mean_and_widens_with_noise():
    import numpy as np

    from toy.stats import paired_bootstrap

    assert paired_bootstrap(np.ones((2, 50))) == (1.0, 1.0, 1.0)  # no spread, no interval
    rng = np.random.default_rng(0)
    small = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.5, 0.3], size=(3, 300))
    mean, low, high = paired_bootstrap(small)
    assert low < mean < high and low < 0.1 < high and high - low < 0.15
    # a seed that disagrees with the others widens the interval: seeds are resampled too
    _, low2, high2 = paired_bootstrap(np.vstack([small, np.full((1, 300), -0.5)]))
    assert high2 - low2 > high - low


def test_reply_form_tells_answers_from_descriptions():
    from toy.world import answer_text, describe, is_reply

    rng = random.Random(4)
    events = random_events(rng, 7)
    for q in [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng):
        assert is_reply(answer_text(q))
    assert not is_reply(describe(events[:2])) and not is_reply("The blue square moves left, then the.")
