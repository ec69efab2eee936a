"""The S_a / S_b manipulation rules of the paper (Sec. 3.1), frame sampling and sharding."""

import random

import pytest

from data_gen.config import ManipulationConfig, load_config, to_dict
from data_gen.index import shard
from data_gen.manipulate import irrelevant_windows, make_segments
from tpo.errors import ConfigError

FRAMES = list(range(3, 3 + 5 * 32, 5))  # 32 sampled frame numbers of some video


def _segments(seed=0, video="a.mp4", **cfg):
    return make_segments(video, FRAMES, ManipulationConfig(**cfg), seed)


def test_irrelevant_is_4_consecutive_frames_and_the_disjoint_other_28():
    for seed in range(50):
        seg = next(s for s in _segments(seed) if s.kind == "irrelevant")
        assert len(seg.chosen_frames) == 4 and len(seg.rejected_frames) == 28
        positions = [FRAMES.index(f) for f in seg.chosen_frames]
        assert positions == list(range(positions[0], positions[0] + 4))
        assert not set(seg.chosen_frames) & set(seg.rejected_frames)
        assert sorted(seg.chosen_frames + seg.rejected_frames) == FRAMES
        assert list(seg.frame_indices) == FRAMES


def test_irrelevant_window_position_varies_and_covers_both_ends():
    starts = {FRAMES.index(next(s for s in _segments(seed) if s.kind == "irrelevant").chosen_frames[0])
              for seed in range(400)}
    assert 0 in starts and 28 in starts and len(starts) > 20


def test_several_irrelevant_windows_never_overlap():
    rng = random.Random(0)
    for _ in range(200):
        windows = irrelevant_windows(32, 4, 5, rng)
        flat = [p for w in windows for p in w]
        assert len(flat) == len(set(flat)) == 20 and max(flat) < 32
        assert all(w == list(range(w[0], w[0] + 4)) for w in windows)


def test_incomplete_keeps_all_32_and_a_uniform_subset_of_16():
    for seed in range(20):
        seg = next(s for s in _segments(seed) if s.kind == "incomplete")
        assert list(seg.chosen_frames) == FRAMES
        assert len(seg.rejected_frames) == 16 and set(seg.rejected_frames) < set(seg.chosen_frames)
        gaps = {FRAMES.index(b) - FRAMES.index(a) for a, b in zip(seg.rejected_frames, seg.rejected_frames[1:])}
        assert gaps == {2}  # every other sampled frame: uniform


def test_counts_per_video_set_the_mix_and_ids_are_unique():
    segs = _segments(irrelevant_per_video=3, incomplete_per_video=2)
    assert [s.kind for s in segs].count("irrelevant") == 3 and [s.kind for s in segs].count("incomplete") == 2
    assert len({s.id for s in segs}) == 5 and all(s.id.startswith("a.mp4::") for s in segs)


def test_segments_are_determined_by_seed_and_video_only():
    assert _segments(7) == _segments(7)
    assert any(_segments(seed) != _segments(seed + 1) for seed in range(5))
    assert any(_segments(video=f"v{i}.mp4")[0].chosen_frames != _segments(video="a.mp4")[0].chosen_frames
               for i in range(5))


def test_sharding_is_a_deterministic_partition():
    rels = [f"dir/clip_{i}.mp4" for i in range(100)]
    shards = [shard(rels, 3, i) for i in range(3)]
    assert sorted(r for s in shards for r in s) == sorted(rels)
    assert sorted(len(s) for s in shards) == [33, 33, 34]
    assert shards == [shard(list(reversed(rels)), 3, i) for i in range(3)]  # listing order does not matter
    with pytest.raises(ConfigError, match="shard-index"):
        shard(rels, 3, 3)


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="videos"):
        load_config(None, ["output_dir=x", "answer.model=m", "answer.family=llava_onevision"])
    base = ["videos=v", "output_dir=o", "answer.model=m", "answer.family=llava_onevision"]
    with pytest.raises(ConfigError, match="irrelevant_window"):
        load_config(None, base + ["manipulation.irrelevant_window=40"])
    with pytest.raises(ConfigError, match="caption.backend"):
        load_config(None, base + ["caption.backend=magic"])
    with pytest.raises(ConfigError, match="nonexistent"):
        load_config(None, base + ["questions.nonexistent=1"])
    with pytest.raises(ConfigError, match="answer.truncated must be 'drop' or 'keep'"):
        load_config(None, base + ["answer.truncated=cut"])
    with pytest.raises(ConfigError, match="answer.time_instruction needs answer.backend=local"):
        load_config(None, base + ["answer.backend=openai", "answer.time_instruction=true"])
    cfg = load_config(None, base + ["api.base_url=http://h/v1"])
    assert cfg.caption.base_url == "http://h/v1" and cfg.postfilter.base_url == "http://h/v1"
    dumped = to_dict(load_config(None, base + ["api.base_url=https://bob:s3cret@h/v1"]))
    assert "s3cret" not in str(dumped) and dumped["questions"]["base_url"] == "https://***@h/v1"


def test_frame_cache_decodes_a_video_once_for_concurrent_jobs(monkeypatch):
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from data_gen import decode

    decoded = []

    def slow_read(path, indices):
        decoded.append(path)
        time.sleep(0.05)
        return np.stack([np.full((2, 2, 3), i, dtype=np.uint8) for i in indices])

    monkeypatch.setattr(decode, "read_frames", slow_read)
    cache = decode.FrameCache(size=2)
    with ThreadPoolExecutor(8) as pool:
        picks = list(pool.map(lambda k: cache.get("a.mp4", (10, 20, 30, 40), (40, 20)), range(16)))
    assert decoded == ["a.mp4"]
    assert all(p[:, 0, 0, 0].tolist() == [40, 20] for p in picks)
    cache.get("b.mp4", (1,), (1,))
    cache.get("c.mp4", (1,), (1,))
    cache.get("a.mp4", (10, 20, 30, 40), (10,))  # evicted by b and c: decoded again
    assert decoded == ["a.mp4", "b.mp4", "c.mp4", "a.mp4"]
