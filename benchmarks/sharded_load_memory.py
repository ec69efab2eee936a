"""Peak host memory (RSS) per rank while loading policy + reference: FSDP2-sharded vs replicated.

- ``replicated``: what every rank did before sharding: ``from_pretrained`` twice (policy, reference);
- ``sharded``: ``tpo.sharding``: both models built empty and sharded, rank 0 reads the checkpoint
  once and broadcasts it into every rank's shards (a live reference);
- ``sharded_policy_only``: the same with the policy alone (precomputed reference log-probs).

The model is a random LLaVA-OneVision whose Qwen2 blocks hold nearly all its weights, saved in bf16
(as LLaVA-Video-7B is released) and loaded as fp32 master weights. ``--save-dtype float32`` shows
why: a checkpoint already in the loaded dtype is memory-mapped by ``from_pretrained``, its
parameters are views of the file, and nothing is resident until first read (and copied on first
write), so loading alone looks free. Each rank is a fresh process (gloo, CPU).

    python benchmarks/sharded_load_memory.py [--hidden 1024] [--layers 5] [--intermediate 4096]
        [--save-dtype bfloat16|float32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tpo.clean_exit import run_and_exit

CASES = {"replicated": 2, "sharded": 2, "sharded_policy_only": 1}  # case -> models loaded
WORKER_TAG = "RESULT "
MB = 2**20  # "MB" in the table; the 7B estimate is in GB = 1e9 bytes


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakRSS:
    """Peak resident set size over a window, in bytes above the RSS at its start.

    ``VmHWM`` (like ``ru_maxrss``) is the peak over the process's whole life, so it is first reset to
    the current RSS by writing "5" to ``/proc/self/clear_refs`` (Linux >= 4.0). Where that is refused,
    a thread samples ``VmRSS`` every millisecond instead: it can only miss a spike shorter than that,
    so it reads low, never high.
    """

    def __enter__(self):
        self.base = self.sampled = _status_kb("VmRSS")
        self._stop, self._thread = threading.Event(), None
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.sampled = max(self.sampled, _status_kb("VmRSS"))

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()
        peak = _status_kb("VmHWM") if self.hwm_reset else max(self.sampled, _status_kb("VmRSS"))
        self.peak = (peak - self.base) * 1024
        self.held = (_status_kb("VmRSS") - self.base) * 1024


def build_checkpoint(path: Path, hidden: int, layers: int, intermediate: int, save_dtype: str = "bfloat16") -> int:
    """Save a random LLaVA-OneVision with that Qwen2 text model under ``path`` in ``save_dtype``;
    the bytes of its fp32 parameters (one full copy as loaded)."""
    import torch

    from tpo.synthetic.tiny_builders import build_llava_onevision

    torch.manual_seed(0)
    model, processor = build_llava_onevision(text=dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8))
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    model.to(getattr(torch, save_dtype)).save_pretrained(path)
    processor.save_pretrained(path)
    return full


def load_models(case: str, model_dir: str, rank: int, world: int) -> list:
    import torch
    from torch.distributed.device_mesh import init_device_mesh

    from tpo import sharding
    from tpo.models import get_adapter

    adapter = get_adapter("llava_onevision")
    if case == "replicated":
        return [adapter.load(model_dir, torch.float32)[0] for _ in range(CASES[case])]
    mesh = init_device_mesh("cpu", (world,))
    preparers = [lambda m: adapter.set_trainable(m, ("language_model", "projector")),
                 lambda m: m.requires_grad_(False)][:CASES[case]]
    models = [sharding.build_sharded(adapter, model_dir, torch.float32, mesh, "32-true", prepare,
                                     checkpointing=i == 0) for i, prepare in enumerate(preparers)]
    sharding.load_full_weights(adapter, model_dir, torch.float32, models, rank)
    return models


def max_diff_to_checkpoint(models: list, model_dir: str, rank: int) -> float | None:
    """Largest |difference| between each model's gathered weights and ``from_pretrained``'s (rank 0)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from tpo.models import get_adapter

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    gathered = [get_model_state_dict(m, options=options) for m in models]  # every rank takes part
    if rank != 0:
        return None
    # Not the safetensors file itself: transformers 5 saves LLaVA under its original key names.
    loaded = get_adapter("llava_onevision").load(model_dir, torch.float32)[0].state_dict()
    assert all(set(g) == set(loaded) for g in gathered), "parameter names differ from from_pretrained's"
    return max((g[k] - loaded[k]).abs().max().item() for g in gathered for k in loaded)


def worker(case: str, model_dir: str, check: bool) -> None:
    """One rank (RANK, WORLD_SIZE, MASTER_* from the environment): print its result as JSON."""
    import ctypes
    import gc

    import torch.distributed as dist

    from tpo.builtin import resolve

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # Warm-up on the tiny model: first-call costs that do not grow with the model (lazy imports of
    # transformers / accelerate / FSDP modules, gloo buffers; ~25 MB) stay out of the measurement.
    load_models(case, str(resolve("builtin:tiny-llava_onevision")), rank, world)
    gc.collect()
    dist.barrier()
    with PeakRSS() as rss:
        models = load_models(case, model_dir, rank, world)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap memory; give it back to see what is live
    live = (_status_kb("VmRSS") - rss.base) * 1024
    result = dict(case=case, rank=rank, peak=rss.peak, held=rss.held, live=live, hwm_reset=rss.hwm_reset)
    if check:
        result["max_diff"] = max_diff_to_checkpoint(models, model_dir, rank)
    print(WORKER_TAG + json.dumps(result), flush=True)
    dist.destroy_process_group()


def measure(model_dir: str | Path, case: str, world: int = 2, check: bool = False) -> list[dict]:
    """Run ``case`` on ``world`` fresh processes; per rank: bytes above its baseline at the peak
    (``peak``), right after loading (``held``) and once freed heap memory is trimmed (``live``)."""
    with socket.socket() as s:  # a free port (another process could take it before rank 0 does: rare)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", case, "--out", str(model_dir)] + (["--check"] if check else [])
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{case} rank failed ({p.returncode}):\n{err[-3000:]}")
    results = [json.loads(next(line[len(WORKER_TAG):] for line in out.splitlines() if line.startswith(WORKER_TAG)))
               for out, _ in outputs]
    return sorted(results, key=lambda r: r["rank"])


def llava_video_7b_on_meta():
    """LLaVA-Video-7B-Qwen2's architecture, parameters on the meta device: Qwen2-7B + SigLIP-so400m
    (26 layers, no head) + projector."""
    from accelerate import init_empty_weights
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                         num_attention_heads=16, image_size=384, patch_size=14,
                                         vision_use_head=False),
        text_config=Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                num_attention_heads=28, num_key_value_heads=4, vocab_size=152064))
    with init_empty_weights():
        return LlavaOnevisionForConditionalGeneration(config)


def llava_video_7b_params() -> int:
    return sum(p.numel() for p in llava_video_7b_on_meta().parameters())


def print_formula(params: float, world: int) -> None:
    full = 4 * params / 1e9  # GB of fp32 weights
    print(f"""
fp32 weights of P parameters (a full copy is 4P bytes), W ranks, n sharded models (2: live reference):
  replicated, every rank:  2 x 4P
  sharded, rank 0:         4P (the one full copy read) + n x 4P/W
  sharded, other ranks:    n x 4P/W
RSS also counts the checkpoint file's pages while from_pretrained has it mapped (2P for bf16; clean
page cache the kernel can drop): rank 0 reaches 4P + 2P while reading, replicated ranks 2 x 4P + 2P.
P = {params:.2e} (LLaVA-Video-7B-Qwen2's architecture built on meta: {llava_video_7b_params():.4e}), W = {world}:
  replicated:              {2 * full:.0f} GB per rank, {2 * full * world:.0f} GB per node""")
    for n, label in [(2, "live reference"), (1, "policy only")]:
        print(f"  sharded, {label + ':':15s} rank 0 {full + n * full / world:.0f} GB (RSS while reading "
              f"{max(1.5 * full, full + n * full / world):.0f}), other ranks {n * full / world:.0f} GB, "
              f"{full + n * full:.0f} GB per node")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--save-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="the checkpoint's dtype (it is always loaded as float32); see the module docstring")
    parser.add_argument("--out", help="where to save the random checkpoint (default: a temporary directory)")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)  # one rank; --out: the model
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.out, args.check)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.out or tmp)
        full = build_checkpoint(model_dir, args.hidden, args.layers, args.intermediate, args.save_dtype)
        print(f"checkpoint {args.save_dtype}, loaded as float32: full copy {full / MB:.0f} MB, "
              f"one shard {full / 2 / MB:.0f} MB (world 2)\n")
        runs = {}
        for case in CASES:
            start = time.perf_counter()
            runs[case] = measure(model_dir, case)
            print(f"{case}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"{'case':20s} {'rank':>4s} {'full MB':>8s} {'shard MB':>8s} {'peak +MB':>9s} {'held +MB':>9s} "
          f"{'live +MB':>9s} {'peak/full':>9s} {'peak vs replicated':>18s}")
    for case, results in runs.items():
        for r in results:
            base = runs["replicated"][r["rank"]]["peak"]
            print(f"{case:20s} {r['rank']:4d} {full / MB:8.0f} {full / 2 / MB:8.0f} {r['peak'] / MB:9.0f} "
                  f"{r['held'] / MB:9.0f} {r['live'] / MB:9.0f} {r['peak'] / full:9.2f} {r['peak'] / base:18.2f}")
    print("peak / held / live: RSS above the rank's baseline at its peak, right after loading, and after "
          "malloc_trim\n(glibc keeps freed heap memory: held - live is free memory the process has not given back)")
    print_formula(8.0e9, 8)


if __name__ == "__main__":
    run_and_exit(main)
