import os
import tempfile

# Every test shares one cache of built-in assets, separate from the user's ~/.cache/tpo.
os.environ.setdefault("TPO_CACHE", os.path.join(tempfile.gettempdir(), "tpo-test-cache"))

import pytest  # noqa: E402

from tpo.synthetic import write_preference_dataset  # noqa: E402
from tpo.synthetic.tiny_models import BUILDERS  # noqa: E402

FAMILIES = sorted(BUILDERS)


@pytest.fixture(scope="session")
def pref_file(tmp_path_factory):
    """A small synthetic preference set: 8 videos x 4 pairs, 8 frames each."""
    root = tmp_path_factory.mktemp("world")
    return write_preference_dataset(root, num_videos=8, pairs_per_video=4, num_frames=8)
