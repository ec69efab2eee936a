"""The toy world: long clips, moments in them, and questions whose answers follow from the ground truth."""

import json
import random
import sys
from pathlib import Path

from toy.niah import write_toy_niah
from collections import Counter

from toy.world import (COLOURS, FRAMES_PER_EVENT, MOMENT, SHAPE_OF, WINDOW_OBJECTS, clip_questions, long_events,
                       moment_floor, moment_questions, name, write_toy_split)
from tpo.data.frames import read_frames
from tpo.evaluate.benchmarks import load_benchmark


def test_questions_are_answered_by_the_events():
    rng = random.Random(0)
    for _ in range(200):
        events = long_events(rng)
        names = [name(e.colour) for e in events]
        assert sorted(names) == sorted(map(name, COLOURS))  # every object once: an object option is always in it
        assert all(e.shape == SHAPE_OF[e.colour] for e in events)
        moments = moment_questions(events, rng)
        (after, held_after), (before, held_before), (motion, held_motion) = moments
        for q in [q for q, _ in moments] + clip_questions(events, rng):
            assert len(q["options"]) == 4 == len(set(q["options"]))
        x = after["question"].removeprefix("What appears right after ").removesuffix("?")
        assert after["options"][after["answer"]] == names[names.index(x) + 1] and x not in after["options"]
        assert held_after == [names.index(x), names.index(x) + 1]
        y = before["question"].removeprefix("What appears right before ").removesuffix("?")
        assert before["options"][before["answer"]] == names[names.index(y) - 1] and y not in before["options"]
        assert held_before == [names.index(y) - 1, names.index(y)]
        mover = events[held_motion[0]]
        assert name(mover.colour) in motion["question"] and motion["options"][motion["answer"]] == mover.motion
        assert {q["category"] for q, _ in moments} == {MOMENT}
        first, last, count = clip_questions(events, rng)
        assert first["options"][first["answer"]] == names[0] and last["options"][last["answer"]] == names[-1]
        assert count["options"][count["answer"]] == str(sum(e.motion == events[0].motion for e in events))


def test_no_option_list_gives_its_answer_away():
    """From the question form and its options alone, neither the answer's position nor its value is
    predictable beyond chance: a lookup of the most frequent answer per option set, fit on half the
    questions, scores at chance on the other half. (The old world's counting options scored 83 %.)"""
    rng = random.Random(1)
    questions = []
    for _ in range(3000):
        events = long_events(rng)
        questions += [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng)
    by_kind = {}
    for q in questions:
        by_kind.setdefault((q["category"], q["question"].split()[0], "after" in q["question"],
                            "before" in q["question"], "first" in q["question"]), []).append(q)
    assert len(by_kind) == 6
    for kind, group in by_kind.items():
        positions = Counter(q["answer"] for q in group)
        assert max(positions.values()) / len(group) < 0.28, (kind, positions)  # 25 % each
        fit, held = group[::2], group[1::2]
        table = {}
        for q in fit:
            table.setdefault(frozenset(q["options"]), Counter())[q["options"][q["answer"]]] += 1
        hits = sum(table.get(frozenset(q["options"]), Counter(x=1)).most_common(1)[0][0] == q["options"][q["answer"]]
                   for q in held)
        assert hits / len(held) < 0.29, (kind, hits / len(held))


def test_the_toy_llm_builds_training_questions_like_the_test_questions():
    """Questions data_gen asks (from an S_a window's captions) have the held-out form: the same
    stems, colour distractors from the palette, and no answer position preferred."""
    from toy.llm import candidate_questions

    rng = random.Random(2)
    positions, stems = Counter(), Counter()
    for _ in range(400):
        events = long_events(rng)
        start = rng.randrange(len(events) - 1)
        window = [(e.colour, [(0, 1), (2, 1)] if e.motion == "right" else [(2, 1), (0, 1)] if e.motion == "left"
                   else [(1, 0), (1, 2)] if e.motion == "down" else [(1, 2), (1, 0)]) for e in events[start:start + 2]]
        for _, question, options in candidate_questions(window, rng):
            objects = set(map(name, COLOURS)) | {"left", "right", "up", "down"}
            assert len(options) == 4 == len(set(options)) and set(options) <= objects
            stems[question.split(" right ")[0] if "right" in question else question.split()[0]] += 1
            named = " ".join(question.removesuffix("?").split()[-3:] if "right" in question else question.split()[3:6])
            assert named in objects and named not in options
            positions[options.index(_truth(question, events))] += 1
    assert set(stems) == {"What appears", "Which"}
    assert max(positions.values()) / sum(positions.values()) < 0.3


def _truth(question: str, events) -> str:
    names = [name(e.colour) for e in events]
    words = question.removesuffix("?").split()
    if "after" in words:
        return names[names.index(" ".join(words[-3:])) + 1]
    if "before" in words:
        return names[names.index(" ".join(words[-3:])) - 1]
    return next(e.motion for e in events if e.colour == words[4])


def test_short_clips_need_the_direction_and_floors_are_what_chance_gives():
    from toy.base import short_clip_examples
    from toy.world import short_events

    rng = random.Random(3)
    in_clip_guess, total = 0, 0
    for _ in range(500):
        events = short_events(rng, rng.choice((3, 4)))
        names = [name(e.colour) for e in events]
        for prompt, answer in short_clip_examples(events, rng):
            if "right after" in prompt or "right before" in prompt:
                named = " ".join(prompt.split("\n")[0].removesuffix("?").split()[-3:])
                options = [line[3:] for line in prompt.split("\n")[1:5]]
                candidates = [o for o in options if o in names and o != named]
                assert "T" + answer[1:].removesuffix(".") in ["T" + c[1:] for c in candidates]
                in_clip_guess += 1 / len(candidates)
                total += 1
    assert total == 1000 and in_clip_guess / total < 0.6  # "name a colour of the clip" is a coin flip or worse
    events = long_events(rng)
    after = {"question": f"What appears right after {name(events[3].colour)}?",
             "options": [name(events[k].colour) for k in (4, 0, 5, 6)]}
    assert moment_floor(after, events) == 1 / 3  # the first object never comes after anything
    assert moment_floor({**after, "question": "Which way does the red square move?"}, events) == 1 / 4


def test_toy_split_is_a_benchmark_with_window_clips(tmp_path):
    path = write_toy_split(tmp_path, num_videos=3, seed=5)
    loaded = load_benchmark("jsonl", path)
    assert not loaded.bad and len(loaded.items) == 18
    item = loaded.items[0]
    frames = read_frames(item.video, list(range(FRAMES_PER_EVENT * 8)))
    assert frames.shape == (64, 64, 64, 3)
    assert all(0.25 <= i.meta["floor"] <= 1 / 3 for i in loaded.items)
    windows = load_benchmark("jsonl", tmp_path / "window.jsonl").items
    moments = {i.id: i for i in loaded.items if i.category == MOMENT}
    assert len(windows) == 9 and {w.id for w in windows} == set(moments)
    for w in windows:  # the same question, on a clip of the WINDOW_OBJECTS objects around the moment
        long = moments[w.id]
        assert (w.question, w.options, w.answer) == (long.question, long.options, long.answer)
        assert len(w.meta["window"]) == WINDOW_OBJECTS
        words = long.question.removesuffix("?").split()
        named = words[-2] if "right" in long.question else words[4]
        assert named in [long.meta["events"][i]["colour"] for i in w.meta["window"]]
        assert len(read_frames(w.video, list(range(FRAMES_PER_EVENT * WINDOW_OBJECTS)))) == 32


def test_toy_haystacks_hold_one_needle_at_each_depth(tmp_path):
    path = write_toy_niah(tmp_path, lengths=(2, 8), depths=(0.0, 1.0), per_cell=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and {(r["meta"]["length"], r["meta"]["depth"]) for r in rows} == {
        (8, 0.0), (8, 1.0), (32, 0.0), (32, 1.0)}  # at most the 32 frames the base is trained on
    for row in rows:
        assert len(row["frame_indices"]) == row["meta"]["length"] == len(set(row["frame_indices"]))
        assert row["options"][row["answer"]] in ("left", "right", "up", "down")
    assert not load_benchmark("jsonl", path).bad


def test_base_mix_is_mostly_short_clips_with_a_share_of_long_moment_questions():
    from toy.base import DESCRIBE, long_clip_examples, short_clip_examples
    from toy.world import short_events

    rng = random.Random(0)
    short = short_clip_examples(short_events(rng, 4), rng)
    assert [p for p, _ in short][0] == DESCRIBE and len(short) == 5  # describe, two motions, after, before
    two = short_clip_examples(short_events(rng, 2), rng)  # "after" would be "the other one": motions only
    assert len(two) == 3 and not any("appears right" in p for p, _ in two)
    long = [p for _ in range(300) for p, _ in long_clip_examples(long_events(rng), rng, moment_share=0.1)]
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


def test_intervals_and_the_decision_rule():
    import numpy as np

    from toy.stats import clip_bootstrap, decision, seeds_for_half_width, t_interval

    assert seeds_for_half_width(0.025, 0.015) == 14  # the plan: t(13) * 2.5 / sqrt(14) = 1.44 points
    mean, low, high = t_interval([0.01, 0.03, 0.02, 0.04])
    assert low < mean == 0.025 < high and abs((high - low) / 2 - 3.182 * 0.012910 / 2) < 1e-4
    assert decision(0.001, 0.03) == "TPO wins" and decision(-0.019, 0.019) == "no effect of 2 points or more"
    assert decision(-0.01, 0.03) == "unresolved" and decision(-0.03, 0.01) == "unresolved"
    rng = np.random.default_rng(0)
    clips = [f"c{k // 3}" for k in range(300)]
    independent = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.5, 0.3], size=(3, 300))
    m, lo, hi = clip_bootstrap(independent, clips)
    assert lo < m < hi and lo < 0.1 < hi
    # the same per-question spread, but a clip's three questions move together: a wider interval
    together = np.repeat(independent[:, ::3], 3, axis=1)
    _, lo2, hi2 = clip_bootstrap(together, clips)
    assert hi2 - lo2 > 1.3 * (hi - lo)
    assert clip_bootstrap(np.ones((2, 6)), clips[:6]) == (1.0, 1.0, 1.0)


def test_calibration_rule_takes_the_smallest_share_in_range_and_bisects_a_jump():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from toy_calibration import SHARES, choose_share

    def fake(curve, window=1.0):
        return lambda share: {"moment": curve(share), "window": window, "order": 1.0}

    chosen, tried = choose_share(fake(lambda s: 0.3 + 0.5 * s))  # 0.3 → 0.35, 0.4, 0.45, 0.55 at share 0.5
    assert chosen == 0.5 and [s for s, _ in tried] == [0.0, 0.1, 0.2, 0.3, 0.5]
    chosen, tried = choose_share(fake(lambda s: 0.3 if s < 0.25 else 0.8))  # jumps over the range at 0.3
    assert [s for s, _ in tried][:5] == [0.0, 0.1, 0.2, 0.3, 0.25] and chosen is None
    chosen, tried = choose_share(fake(lambda s: 0.3 if s <= 0.2 else 0.55 if s <= 0.25 else 0.8))
    assert chosen == 0.25
    chosen, tried = choose_share(fake(lambda s: 0.55, window=0.9))  # in range, but the window is not solved
    assert chosen is None and len(tried) == len(SHARES)


def test_reply_form_tells_answers_from_descriptions():
    from toy.world import answer_text, describe, is_reply

    rng = random.Random(4)
    events = long_events(rng)
    for q in [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng):
        assert is_reply(answer_text(q))
    assert not is_reply(describe(events[:2])) and not is_reply("The blue square moves left, then the.")
