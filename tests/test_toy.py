"""The toy temporal world: ground truth per frame and questions whose answers follow from it."""

import random

from tpo.data.frames import read_frames
from tpo.evaluate.benchmarks import load_benchmark
from toy.world import TEMPORAL, frame_captions, name, questions, write_toy_split
from tpo.synthetic.world import random_events


def test_questions_are_answered_by_the_events():
    rng = random.Random(0)
    for _ in range(200):
        events = random_events(rng, rng.choice([3, 4]))
        names = [name(e) for e in events]
        qs = questions(events, rng)
        for q in qs:
            assert len(q["options"]) == 4 == len(set(q["options"]))
        after, before, first, last, attribute, counting = qs
        x = after["question"].removeprefix("What appears right after ").removesuffix("?")
        assert after["options"][after["answer"]] == names[names.index(x) + 1]
        y = before["question"].removeprefix("What appears right before ").removesuffix("?")
        assert before["options"][before["answer"]] == names[names.index(y) - 1]
        assert first["options"][first["answer"]] == names[0] and last["options"][last["answer"]] == names[-1]
        # order questions offer the clip's own objects: seeing which objects appear is not enough
        assert set(names) <= set(first["options"]) | {names[0]} and len(set(first["options"]) & set(names)) >= 3
        mover = next(e for e in events if name(e) in attribute["question"])
        assert attribute["options"][attribute["answer"]] == mover.motion
        assert counting["options"][counting["answer"]] == str(len(events))
        assert {q["category"] for q in qs} == {TEMPORAL, "attribute", "counting"}


def test_frame_captions_follow_the_events():
    events = random_events(random.Random(1), 3)
    captions = frame_captions(events, 4)
    assert len(captions) == 12 and captions[0] == f"The {events[0].colour} {events[0].shape} moves {events[0].motion}"
    assert captions[4].startswith(f"The {events[1].colour}") and captions[11].startswith(f"The {events[2].colour}")


def test_toy_split_is_an_evaluation_benchmark(tmp_path):
    path = write_toy_split(tmp_path, num_videos=3, seed=5)
    loaded = load_benchmark("jsonl", path)
    assert not loaded.bad and len(loaded.items) == 18
    item = loaded.items[0]
    frames = read_frames(item.video, list(range(8 * len(item.meta["events"]))))
    assert frames.shape[1:] == (64, 64, 3)


def test_base_sft_mix_keeps_few_order_questions():
    from toy.base import DESCRIBE, sft_examples

    rng = random.Random(0)
    prompts = [p for _ in range(300) for p, _ in sft_examples(random_events(rng, 4), rng, order_share=0.1)]
    order = sum(p.startswith("What appears right") for p in prompts)
    assert prompts.count(DESCRIBE) == 300 and 300 * 6 // 5 < len(prompts)  # all other questions kept
    assert 20 < order < 100  # ~10 % of the 600 right-after/right-before questions
    one_event = sft_examples(random_events(rng, 1), rng, order_share=1.0)
    assert [p for p, _ in one_event] == [DESCRIBE]  # short clips are only described


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
