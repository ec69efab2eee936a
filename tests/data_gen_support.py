"""Helpers shared by the data_gen tests: config for the synthetic world, a run, its outputs."""

import socket
from pathlib import Path
from types import SimpleNamespace

from data_gen.config import load_config
from data_gen.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "data_gen/configs/synthetic.yaml"
OUTPUTS = ("preferences.jsonl", "filtered_out.jsonl", "skipped.jsonl", "failures.jsonl", "stats.json")


def config(videos, out, server, *overrides):
    return load_config(str(CONFIG), [f"videos={videos}", f"output_dir={out}", f"api.base_url={server.base_url}",
                                     "api.timeout_s=1.0", "api.backoff_s=0.01", *overrides])


def unreachable():
    """A stand-in server at a local port nothing listens on (bound, read, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return SimpleNamespace(base_url=f"http://127.0.0.1:{port}/v1")


def run(videos, out, server, *overrides, **kwargs):
    pipeline = Pipeline(config(videos, out, server, *overrides), progress=False, **kwargs)
    return pipeline, pipeline.run()


def outputs(out):
    """The dataset files that must not depend on how a run went (crashes, faults, shards)."""
    return {name: (Path(out) / name).read_text() for name in OUTPUTS}


def items(manifest, field):
    return {stage: counts[field] for stage, counts in manifest["run"]["items"].items()}
