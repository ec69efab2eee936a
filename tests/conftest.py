import os
import tempfile
from pathlib import Path

# Every test shares one cache of built-in assets, separate from the user's ~/.cache/tpo.
os.environ.setdefault("TPO_CACHE", os.path.join(tempfile.gettempdir(), "tpo-test-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from tpo.synthetic import write_preference_dataset  # noqa: E402
from tpo.synthetic.tiny_models import BUILDERS  # noqa: E402

FAMILIES = sorted(BUILDERS)
REPO = Path(__file__).resolve().parents[1]
# where the shipped recipes write (runs/demo, ...), relative to the working directory
RECIPE_ROOTS = sorted({yaml.safe_load(p.read_text())["trainer"].get("default_root_dir") or "lightning_logs"
                       for p in (REPO / "lightning_configs").glob("*.yaml")})


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.is_dir() else set()


@pytest.fixture(autouse=True)
def _nothing_written_into_the_recipes_folders():
    """No test writes into the clone's ``runs/demo`` (or another recipe's default_root_dir): a test runs
    tpo with ``--trainer.default_root_dir`` or in its tmp_path."""
    folders = {base / root for base in (REPO, Path.cwd()) for root in RECIPE_ROOTS}
    before = {folder: _files(folder) for folder in folders}
    yield
    written = sorted(str(path) for folder in folders for path in _files(folder) - before[folder])
    assert not written, f"the test wrote into a recipe's default_root_dir: {written[:3]}"


def random_clip(rng, frames=8, seconds=60.0, fps=25.0, size=64):
    """Random frames presented as ``frames`` uniformly sampled from ``seconds`` of video."""
    from tpo.data.frames import Clip, VideoInfo, frame_metadata, uniform_frame_indices

    info = VideoInfo(int(seconds * fps), fps)
    return Clip(rng.integers(0, 255, (frames, size, size, 3), dtype=np.uint8),
                frame_metadata(info, uniform_frame_indices(info.num_frames, frames)))


@pytest.fixture(scope="session")
def pref_file(tmp_path_factory):
    """A small synthetic preference set: 8 videos x 4 pairs, 8 frames each."""
    root = tmp_path_factory.mktemp("world")
    return write_preference_dataset(root, num_videos=8, pairs_per_video=4, num_frames=8)


@pytest.fixture(scope="session")
def raw_videos(tmp_path_factory):
    """A folder of raw synthetic clips (4 events x 16 frames each) for the data pipeline."""
    from tpo.synthetic.world import write_clips

    root = tmp_path_factory.mktemp("raw_videos")
    write_clips(root, num_videos=4)
    return root


@pytest.fixture
def scripted_server():
    """A local OpenAI-compatible server with scripted answers and injectable faults."""
    from data_gen.scripted_server import ScriptedServer

    with ScriptedServer(timeout_sleep_s=2.5) as server:
        yield server


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, raw_videos):
    """One uninterrupted, fault-free data_gen run: what every other run must reproduce."""
    from data_gen.scripted_server import ScriptedServer
    from data_gen_support import run

    out = tmp_path_factory.mktemp("reference")
    with ScriptedServer() as server:
        _, manifest = run(raw_videos, out, server)
    return out, manifest


# Tests that fit in this process start gloo process groups, whose threads can abort the interpreter's
# finalisation after every test passed: pytest leaves with its own status first (tpo/clean_exit.py).
_SESSION = {}


def pytest_sessionstart(session):
    _SESSION["session"] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    session = _SESSION.get("session")
    if session is not None and not hasattr(config, "workerinput"):
        from tpo.clean_exit import flush_and_exit

        flush_and_exit(int(session.exitstatus))


@pytest.fixture(params=["decord", "pyav"])
def video_backend(request, monkeypatch):
    """Run the test once with each video decoder (tpo.data.decoders)."""
    from tpo.data.decoders import ENV
    from tpo.data.frames import video_info

    monkeypatch.setenv(ENV, request.param)
    video_info.cache_clear()
    yield request.param
    video_info.cache_clear()
