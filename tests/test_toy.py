"""The toy world: long clips, moments in them, and questions whose answers follow from the ground truth."""

import json

import pytest
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
        (after, held_after), (before, held_before) = moments
        for q in [q for q, _ in moments] + clip_questions(events, rng):
            assert len(q["options"]) == 4 == len(set(q["options"]))
        x = after["question"].removeprefix("What appears right after ").removesuffix("?")
        assert after["options"][after["answer"]] == names[names.index(x) + 1] and x not in after["options"]
        assert held_after == [names.index(x), names.index(x) + 1]
        y = before["question"].removeprefix("What appears right before ").removesuffix("?")
        assert before["options"][before["answer"]] == names[names.index(y) - 1] and y not in before["options"]
        assert held_before == [names.index(y) - 1, names.index(y)]
        assert {q["category"] for q, _ in moments} == {MOMENT}
        first, last = clip_questions(events, rng)
        assert first["options"][first["answer"]] == names[0] and last["options"][last["answer"]] == names[-1]


def test_each_hand_over_shows_the_next_object_inside_the_current_one():
    """The last sampled frame of each object (of 4) holds the next object's colour at its centre;
    no other frame holds a second colour: the moment's answer is in one frame of the moment."""
    import numpy as np

    from tpo.data.frames import uniform_frame_indices
    from tpo.synthetic.world import PALETTE
    from toy.world import NUM_FRAMES, render

    events = long_events(random.Random(7))
    frames = render(events)[uniform_frame_indices(FRAMES_PER_EVENT * len(events), NUM_FRAMES)]
    for k, frame in enumerate(frames):
        colours = {c for c, rgb in PALETTE.items() if (frame == np.array(rgb)).all(-1).sum() > 20}
        current, entering = events[k // 4], events[k // 4 + 1] if k // 4 + 1 < len(events) else None
        shows_next = k % 4 == 3 and entering is not None
        assert colours == ({current.colour, entering.colour} if shows_next else {current.colour}), k


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
    assert len(by_kind) == 4  # after, before, first, last
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
        seen = [e.colour for e in events[start:start + 2]]  # what an S_a window's captions name: one hand-over
        for _, question, options in candidate_questions(seen, rng):
            objects = set(map(name, COLOURS))
            assert len(options) == 4 == len(set(options)) and set(options) <= objects
            stems[question.split(" right ")[0]] += 1
            named = " ".join(question.removesuffix("?").split()[-3:])
            assert named in objects and named not in options
            positions[options.index(_truth(question, events))] += 1
    assert set(stems) == {"What appears"}
    assert max(positions.values()) / sum(positions.values()) < 0.3


def _truth(question: str, events) -> str:
    names = [name(e.colour) for e in events]
    words = question.removesuffix("?").split()
    return names[names.index(" ".join(words[-3:])) + (1 if "after" in words else -1)]


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
    before = {"question": f"What appears right before {name(events[3].colour)}?",
              "options": [name(events[k].colour) for k in (2, 0, 5, 6)]}
    assert moment_floor(before, events) == 1 / 4  # the last object (7) is not among the options


def test_toy_split_is_a_benchmark_with_window_clips(tmp_path):
    path = write_toy_split(tmp_path, num_videos=3, seed=5)
    loaded = load_benchmark("jsonl", path)
    assert not loaded.bad and len(loaded.items) == 12
    item = loaded.items[0]
    frames = read_frames(item.video, list(range(FRAMES_PER_EVENT * 8)))
    assert frames.shape == (64, 64, 64, 3)
    assert all(0.25 <= i.meta["floor"] <= 1 / 3 for i in loaded.items)
    windows = load_benchmark("jsonl", tmp_path / "window.jsonl").items
    moments = {i.id: i for i in loaded.items if i.category == MOMENT}
    assert len(windows) == 6 and {w.id for w in windows} == set(moments)
    for w in windows:  # the same question, on a clip of the WINDOW_OBJECTS objects around the moment
        long = moments[w.id]
        assert (w.question, w.options, w.answer) == (long.question, long.options, long.answer)
        assert len(w.meta["window"]) == WINDOW_OBJECTS
        words = long.question.removesuffix("?").split()
        named = words[-2]
        assert named in [long.meta["events"][i]["colour"] for i in w.meta["window"]]
        assert len(read_frames(w.video, list(range(FRAMES_PER_EVENT * WINDOW_OBJECTS)))) == 32


def test_toy_haystacks_hold_one_needle_at_each_depth(tmp_path):
    path = write_toy_niah(tmp_path, lengths=(2, 8), depths=(0.0, 1.0), per_cell=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and {(r["meta"]["length"], r["meta"]["depth"]) for r in rows} == {
        (8, 0.0), (8, 1.0), (32, 0.0), (32, 1.0)}  # at most the 32 frames the base is trained on
    for row in rows:
        assert len(row["frame_indices"]) == row["meta"]["length"] == len(set(row["frame_indices"]))
        assert row["options"][row["answer"]] in [name(c) for c in COLOURS] and "right" in row["question"]
    assert not load_benchmark("jsonl", path).bad


def test_base_mix_is_mostly_short_clips_with_a_share_of_long_moment_questions():
    from toy.base import DESCRIBE, long_clip_examples, short_clip_examples
    from toy.world import short_events

    rng = random.Random(0)
    short = short_clip_examples(short_events(rng, 4), rng)
    assert [p for p, _ in short][0] == DESCRIBE and len(short) == 3  # describe, after, before
    two = short_clip_examples(short_events(rng, 2), rng)  # "after" would be "the other one": described only
    assert len(two) == 1 and not any("appears right" in p for p, _ in two)
    common, moments = long_clip_examples(long_events(rng), rng)
    assert [p for p, _ in common][0] == DESCRIBE and len(common) == 3  # describe, first, last
    assert len(moments) == 2 and all(p.startswith("What appears right") for p, _ in moments)


def test_toy_base_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from toy.base import ToyBaseConfig, toy_base_path, train_toy_base

    cfg = ToyBaseConfig(num_clips=4, describe_steps=1, steps=2, share_steps=1, batch_size=2, hidden_size=64,
                        num_layers=1)
    first = train_toy_base(tmp_path / "a", cfg)
    second = train_toy_base(tmp_path / "b", cfg)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.setenv("TPO_CACHE", str(tmp_path / "cache"))
    path = toy_base_path(cfg)
    # no half-built directory left; the common run's checkpoints beside it
    built = {p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"}
    assert path.exists() and toy_base_path(cfg) == path and len(built) == 2 and path.name in built
    assert (built - {path.name}).pop().endswith(".checkpoints")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_toy_base_resumes_from_its_newest_checkpoint_and_shares_branch_from_the_common_run(tmp_path):
    import shutil

    import torch

    from toy.base import ToyBaseConfig, train_toy_base

    cfg = ToyBaseConfig(num_clips=6, describe_steps=1, steps=6, share_steps=2, batch_size=2, hidden_size=64,
                        num_layers=1, long_share=0.5, long_moment_share=0.0)
    whole = _weights(train_toy_base(tmp_path / "whole", cfg))
    checkpoints = tmp_path / "checkpoints"
    train_toy_base(tmp_path / "first", cfg, checkpoints, every=2)
    assert sorted(p.name for p in (checkpoints / "common").iterdir()) == ["step-000002.pt", "step-000004.pt"]
    assert sorted(p.name for p in (checkpoints / "share-0.0").iterdir()) == ["step-000006.pt"]
    # killed after step 4: the share's checkpoint is gone, and a rerun goes on from the common step 4
    (checkpoints / "share-0.0" / "step-000006.pt").unlink()
    resumed = _weights(train_toy_base(tmp_path / "resumed", cfg, checkpoints, every=2))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # the log goes on too
    # another share trains only its last phase, from the same common checkpoint, and differs
    other = ToyBaseConfig(**{**cfg.__dict__, "long_moment_share": 1.0})
    shutil.rmtree(checkpoints / "common" / "step-000002.pt", ignore_errors=True)
    branched = _weights(train_toy_base(tmp_path / "other", other, checkpoints, every=2))
    alone = _weights(train_toy_base(tmp_path / "alone", other))
    assert all(torch.equal(alone[k], branched[k]) for k in alone)
    assert any(not torch.equal(whole[k], branched[k]) for k in whole)
    # a changed recipe never resumes from another's state
    with pytest.raises(SystemExit, match="another base recipe"):
        train_toy_base(tmp_path / "changed", ToyBaseConfig(**{**cfg.__dict__, "lr": 1e-4}), checkpoints)


def test_the_share_acts_only_in_the_last_phase():
    from toy.base import ToyBaseConfig, training_pool

    rows = [{"phase": "describe", "draw": 0.9}, {"phase": "mix", "draw": 0.1},
            {"phase": "long_moment", "draw": 0.2}, {"phase": "long_moment", "draw": 0.7}]
    cfg = ToyBaseConfig(describe_steps=10, steps=100, share_steps=20, long_moment_share=0.5)
    assert training_pool(rows, cfg, 9) == rows[:1]
    assert training_pool(rows, cfg, 79) == rows[:2]  # the common part: no long-clip moment question
    assert training_pool(rows, cfg, 80) == rows[:3]  # the last 20 steps: the draws below the share


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

    def fake(curve, window=1.0, kind=1.0):
        return lambda share: {"moment": curve(share), "window": window, "window_after": kind, "window_before": 1.0,
                              "order": 1.0}

    chosen, tried = choose_share(fake(lambda s: 0.2 + 0.5 * s))  # 0.2 → 0.25, 0.3, 0.35, 0.45 at share 0.5
    assert chosen == 0.5 and [s for s, _ in tried] == [0.0, 0.1, 0.2, 0.3, 0.5]
    chosen, tried = choose_share(fake(lambda s: 0.3 if s < 0.25 else 0.8))  # jumps over the range at 0.3
    assert [s for s, _ in tried][:5] == [0.0, 0.1, 0.2, 0.3, 0.25] and chosen is None
    chosen, tried = choose_share(fake(lambda s: 0.3 if s <= 0.2 else 0.55 if s <= 0.25 else 0.8))
    assert chosen == 0.25
    chosen, tried = choose_share(fake(lambda s: 0.55, window=0.85))  # in range, but the window is not solved
    assert chosen is None and len(tried) == len(SHARES)
    chosen, tried = choose_share(fake(lambda s: 0.55, kind=0.8))  # nor one moment kind on it
    assert chosen is None and len(tried) == len(SHARES)
    assert choose_share(fake(lambda s: 0.55, window=0.9, kind=0.85))[0] == 0.0


def test_reply_form_tells_answers_from_descriptions():
    from toy.world import answer_text, describe, is_reply

    rng = random.Random(4)
    events = long_events(rng)
    for q in [q for q, _ in moment_questions(events, rng)] + clip_questions(events, rng):
        assert is_reply(answer_text(q))
    assert not is_reply(describe(events[:2])) and not is_reply("The blue square moves left, then the.")


def test_the_shipped_base_is_checked_against_its_sums_and_used_for_its_own_recipe(tmp_path, monkeypatch):
    import toy.base as base

    trained = tmp_path / "trained"
    trained.mkdir()
    cfg = base.ToyBaseConfig(num_clips=4, steps=2)
    (trained / "toy_base.json").write_text(json.dumps(base.recipe_record(cfg)))
    (trained / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(base, "SHIPPED", tmp_path / "shipped")
    shipped = base.ship(trained)
    assert sorted(p.name for p in shipped.iterdir()) == ["SHA256SUMS", "model.safetensors", "toy_base.json"]
    assert base.toy_base_path(cfg) == shipped  # its own recipe: loaded, not trained
    (shipped / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(SystemExit, match="does not match its sha256"):
        base.toy_base_path(cfg)


def test_the_committed_base_loads_and_is_the_default_recipes():
    import torch

    from toy.base import SHIPPED, ToyBaseConfig, recipe_record, shipped_config, toy_base_path
    from tpo.models import get_adapter

    assert shipped_config() == recipe_record(ToyBaseConfig())  # else toy_base_path would train one (minutes)
    assert toy_base_path(ToyBaseConfig()) == SHIPPED  # the tests and the reproduction load it, never train it
    assert shipped_config()["hidden_size"] == 192
    model, _ = get_adapter("llava_onevision").load(str(SHIPPED), torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_a_work_folder_of_another_toy_world_is_refused_not_reused(tmp_path):
    from toy.base import TOY_VERSION
    from toy.reproduction import PipelineRun

    PipelineRun(tmp_path / "fresh")
    assert (tmp_path / "fresh" / "toy_version").read_text().strip() == TOY_VERSION
    PipelineRun(tmp_path / "fresh")  # its own version: reused
    (tmp_path / "old" / "dev-200").mkdir(parents=True)  # made before folders were marked
    with pytest.raises(SystemExit, match="toy world version before"):
        PipelineRun(tmp_path / "old")
    (tmp_path / "fresh" / "toy_version").write_text("8\n")
    with pytest.raises(SystemExit, match="version 8"):
        PipelineRun(tmp_path / "fresh")
