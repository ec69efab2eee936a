"""decord and PyAV behind one interface: the same frame count, fps and frames, pixel for pixel, on
our synthetic videos and on a 720p H.264 video with B-frames; the same errors for bad files."""

import random

import av
import numpy as np
import pytest

from tpo.data import decoders
from tpo.data.frames import VideoReadError, check_video, read_clip, video_info
from tpo.errors import ConfigError
from tpo.synthetic.world import random_events, render_frames, write_video


def _h264_with_b_frames(path, frames: int = 300, width: int = 1280, height: int = 720, fps: int = 30):
    """Moving gradients and noise, so that every frame differs and B-frames are used."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "3", "g": "48", "crf": "23", "preset": "ultrafast", "tune": "zerolatency"}
        stream.options.pop("tune")  # zerolatency would switch B-frames off
        for t in range(frames):
            image = np.stack([(x + 7 * t) % 256, (y + 3 * t) % 256, (x + y + 11 * t) % 256], -1).astype(np.uint8)
            image[::8, ::8] = rng.integers(0, 256, image[::8, ::8].shape, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    write_video(root / "synthetic.mp4", render_frames(random_events(random.Random(0), 4), 24), fps=8)
    _h264_with_b_frames(root / "h264_bframes.mp4")
    return root


def test_the_h264_video_has_b_frames(videos):
    with av.open(str(videos / "h264_bframes.mp4")) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    decode_order = [p.pts for p in packets]
    assert decode_order != sorted(decode_order)  # B-frames: presentation order is not decode order


@pytest.mark.parametrize("name", ["synthetic.mp4", "h264_bframes.mp4"])
def test_both_backends_decode_the_same_frames(videos, name):
    path = videos / name
    opened = {b: decoders.open_video(path, b) for b in decoders.BACKENDS}
    assert opened["decord"].num_frames == opened["pyav"].num_frames
    assert opened["decord"].fps == pytest.approx(opened["pyav"].fps)
    total = opened["pyav"].num_frames
    rng = random.Random(1)
    for indices in ([0], [total - 1], sorted(rng.sample(range(total), 32)), [5, 3, 5, total - 1, 0],
                    list(range(40, 48))):  # scattered, unsorted with repeats, consecutive
        frames = {b: decoders.decode(opened[b], indices) for b in decoders.BACKENDS}
        assert frames["pyav"].shape == frames["decord"].shape == (len(indices), *frames["pyav"].shape[1:])
        assert np.array_equal(frames["pyav"], frames["decord"]), indices


def _bad_files(root):
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    good = (root / "synthetic.mp4").read_bytes()
    (root / "cut_before_its_index.mp4").write_bytes(good[: len(good) // 2])  # the index (moov) is at the end
    write_video(root / "indexed_first.mp4", render_frames(random_events(random.Random(0), 4), 24), faststart=True)
    indexed = (root / "indexed_first.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(indexed[: len(indexed) * 3 // 4])
    return ["empty.mp4", "garbage.mp4", "cut_before_its_index.mp4", "truncated.mp4"]


def _reason(message: str) -> str:
    return message.split(":")[0]


def test_bad_files_fail_with_the_same_reason(videos, monkeypatch, tmp_path):
    (tmp_path / "synthetic.mp4").write_bytes((videos / "synthetic.mp4").read_bytes())
    reasons = {}
    for backend in decoders.BACKENDS:
        monkeypatch.setenv(decoders.ENV, backend)
        for name in _bad_files(tmp_path):
            with pytest.raises(VideoReadError) as caught:
                check_video(tmp_path / name)
            reasons[backend, name] = _reason(str(caught.value))
    for name in _bad_files(tmp_path):
        assert reasons["decord", name] == reasons["pyav", name], name
    assert [reasons["pyav", n] for n in _bad_files(tmp_path)] == ["empty file", "cannot open", "cannot open", "truncated"]


def test_the_backend_is_chosen_and_recorded(videos, monkeypatch):
    monkeypatch.setenv(decoders.ENV, "pyav")
    video_info.cache_clear()
    assert read_clip(videos / "synthetic.mp4", [0, 1]).metadata.video_backend == "pyav"
    monkeypatch.delenv(decoders.ENV)
    assert decoders.backend_name() == "decord"  # installed here
    monkeypatch.setenv(decoders.ENV, "ffmpeg")
    with pytest.raises(ConfigError, match="choose from"):
        decoders.backend_name()


def _first_batch(pref_file):
    import torch

    from tpo.data.datamodule import PreferenceDataModule
    from tpo.module import TPOModule

    torch.manual_seed(0)
    dm = PreferenceDataModule(path=str(pref_file), batch_size=2, num_workers=0)
    dm.connect(TPOModule("builtin:tiny-llava_onevision", "llava_onevision"))
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_a_record_trains_on_the_same_inputs_with_either_backend(pref_file, monkeypatch):
    import torch

    batches = {}
    for backend in decoders.BACKENDS:
        monkeypatch.setenv(decoders.ENV, backend)
        video_info.cache_clear()
        batches[backend] = _first_batch(pref_file)
    flat = {b: dict(_leaves(batch)) for b, batch in batches.items()}
    assert flat["decord"].keys() == flat["pyav"].keys() and any("pixel" in k for k in flat["pyav"])
    for key, value in flat["decord"].items():
        other = flat["pyav"][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


def _leaves(value, path=""):
    """``(path, leaf)`` of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}/{i}")
    else:
        yield path, value
