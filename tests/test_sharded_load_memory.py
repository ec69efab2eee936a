"""Host memory of sharded loading (``benchmarks/sharded_load_memory.py``), 2 processes on CPU.

Rank 0 holds at most one full copy (the checkpoint it reads) plus its shards, the other rank only its
shards, and the shards hold the weights ``from_pretrained`` loads. The random model is 263 MB of fp32
weights saved in bf16, so a full copy is real memory (see the benchmark's docstring).
"""

import importlib.util
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "sharded_load_memory.py"
_spec = importlib.util.spec_from_file_location("sharded_load_memory", _path)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MB = 2**20
# What is not weights: rank 1 receives every tensor whole before copying its shard out, so the largest
# one (16 MB here) is in flight on top of its shards; rank 0 measured +1 MB, rank 1 +16 MB. A fixed
# mmap threshold makes glibc return those freed buffers at once: with its default (dynamic)
# threshold they go to the heap and 20-58 MB of them stayed resident (14 runs), which says
# nothing about the loading code. A rank that read a full copy (263 MB) would be far past this.
SLACK = 40 * MB


@pytest.fixture(autouse=True)
def fixed_mmap_threshold(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))  # inherited by the ranks' processes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded_load_model")
    full = bench.build_checkpoint(path, hidden=1024, layers=4, intermediate=4096)  # fp32 bytes, 263 MB
    return path, full


@pytest.mark.slow
@pytest.mark.parametrize("case", ["sharded", "sharded_policy_only"])
def test_sharded_load_peak_memory(checkpoint, case):
    path, full = checkpoint
    shards = bench.CASES[case] * full / 2  # what each of the 2 ranks keeps: half of every model
    rank0, rank1 = bench.measure(path, case, world=2, check=True)
    report = f"full {full / MB:.0f} MB, shards {shards / MB:.0f} MB: rank 0 {rank0}, rank 1 {rank1}"

    assert rank0["max_diff"] == 0, report  # both models gathered equal what from_pretrained loads
    assert rank1["peak"] > 0.9 * shards, report  # the measurement sees the shards being filled
    assert rank0["peak"] < full + shards + SLACK, report  # one full copy read, no second one
    assert rank1["peak"] < shards + SLACK, report  # no full copy at all on the other rank
    assert rank0["peak"] - rank1["peak"] > full / 2, report  # the full copy is rank 0's alone
    if case == "sharded_policy_only":
        assert rank1["peak"] < 0.6 * full, report  # clearly below one full copy
