"""Everything a lent GPU should check, in one command that ends within 8 minutes with one summary.

1. ``nan_repro``: the shared-prefix mask through SDPA's backward at a length with L % 128 == 64
   (pytorch/pytorch#196678: cuDNN attention before 9.26 returns NaN gradients there), once per
   ``model.attention`` choice; finite or not, the largest gradient error against fp32 math, and the
   attention kernels that ran.
2. ``sharded_demo``: ``lightning_configs/demo_fsdp.yaml`` on 1 GPU in bf16-mixed (FSDP2, the default
   attention): exit status, time and the last epoch's means.
3. ``dpo_step``: ``benchmarks/dpo_step.py --shape onevision-0.5b --variants naive ours ours_flex``:
   pairs/s, peak memory and ratios of the naive step, shared prefix with SDPA and with FlexAttention.
4. ``mfu``: forward + backward of a stack of LLaVA-Video-7B's (Qwen2-7B's) decoder blocks in bf16 at
   8k tokens: model FLOPs utilisation against ``--peak-tflops``.

Each part runs in its own process under its own time limit, so one failure or hang does not
hide the others.

    python benchmarks/gpu_check.py [--peak-tflops 989]
    python benchmarks/gpu_check.py --dry-run   # CPU: parts 1 and 4 at toy size, parts 2 and 3 named only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tpo.clean_exit import run_and_exit  # noqa: E402

LIMITS_S = {"nan_repro": 120, "sharded_demo": 120, "dpo_step": 180, "mfu": 60}  # 480 s in all
RESULT_TAG = "RESULT "


# ---- 1. masked attention backward ------------------------------------------------------------
def _attention_kernels(run) -> list[str]:
    """Names of the attention kernels ``run()`` launches on the GPU (empty on CPU)."""
    if not torch.cuda.is_available():
        run()
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    words = ("fmha", "cudnn", "flash", "efficient", "attention", "triton_tem")
    names = {e.key for e in prof.key_averages() if any(w in e.key.lower() for w in words)}
    return sorted(n[:60] for n in names)[:4]


def nan_repro(tiny: bool) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tpo.attention import KINDS
    from tpo.shared_prefix import pair_attention_mask, pair_block_mask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    heads, dim, length = (2, 16, 192) if tiny else (28, 128, 8256)  # both are 64 modulo 128
    answer = length // 16
    segments = torch.tensor([[length - 2 * answer, answer, answer]], device=device)  # prompt, chosen, rejected
    mask = pair_attention_mask(segments, length)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, out_grad = (torch.randn(1, heads, length, dim, device=device, generator=g) for _ in range(4))

    def grads(kind: str | None, dtype: torch.dtype):
        leaves = [t.detach().clone().to(dtype).requires_grad_() for t in (q, k, v)]
        if kind == "flex_attention":
            from torch.nn.attention.flex_attention import flex_attention

            out = torch.compile(flex_attention)(*leaves, block_mask=pair_block_mask(segments, length))
        elif kind is None:  # the reference: fp32 math
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
        else:
            torch.backends.cuda.enable_cudnn_sdp(kind != "sdpa_no_cudnn")
            out = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
        out.backward(out_grad.to(dtype))
        return [t.grad.float() for t in leaves]

    reference = grads(None, torch.float32)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    results = {"device": device, "length": length, "cudnn": torch.backends.cudnn.version()}
    for kind in KINDS:
        if kind == "flex_attention" and device == "cpu":
            results[kind] = "skipped (FlexAttention has no backward on CPU)"
            continue
        found = {}
        kernels = _attention_kernels(lambda: found.setdefault("grads", grads(kind, dtype)))
        finite = all(bool(torch.isfinite(t).all()) for t in found["grads"])
        error = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(found["grads"], reference))
        results[kind] = {"finite": finite, "max_rel_error": round(error, 5), "kernels": kernels}
    torch.backends.cuda.enable_cudnn_sdp(True)
    return results


# ---- 4. MFU of a 7B-shaped block stack -------------------------------------------------------
def mfu(tiny: bool, peak_tflops: float) -> dict:
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dims = (dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
            if tiny else dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4))
    layers, tokens = (2, 256) if tiny else (4, 8192)
    config = Qwen2Config(**dims, num_hidden_layers=layers, attn_implementation="sdpa")
    blocks = torch.nn.ModuleList(Qwen2DecoderLayer(config, i) for i in range(layers)).to(device, dtype)
    rotary = Qwen2RotaryEmbedding(config).to(device)
    x = torch.randn(1, tokens, config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    position_ids = torch.arange(tokens, device=device)[None]
    rope = rotary(x, position_ids)

    def step():
        h = x
        for block in blocks:
            out = block(h, attention_mask=None, position_ids=position_ids, position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
        h.float().square().mean().backward()

    times = []
    for i in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sorted(times[2:])[len(times[2:]) // 2]  # median after 2 warm-up steps
    params = sum(p.numel() for p in blocks.parameters())
    causal_attention = 6 * layers * tokens * tokens * config.hidden_size  # fwd + bwd, half the score matrix
    flops = 6 * params * tokens + causal_attention
    return {"device": device, "blocks": layers, "tokens": tokens, "step_s": round(seconds, 4),
            "tflops": round(flops / seconds / 1e12, 1), "mfu": round(flops / seconds / (peak_tflops * 1e12), 3)}


# ---- 2. and 3.: commands ---------------------------------------------------------------------
def demo_command(root: str) -> list[str]:
    return [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs" / "demo_fsdp.yaml"),
            "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
            "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false"]


def dpo_step_command() -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / "dpo_step.py"), "--shape", "onevision-0.5b",
            "--variants", "naive", "ours", "ours_flex", "--steps", "5", "--warmup", "3"]


def run_command(cmd: list[str], limit: float) -> tuple[int | str, str, float]:
    """Run ``cmd`` in its own process group; past ``limit`` the whole group is killed (no process it
    started stays on the GPU during the next part)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        status, out = proc.returncode, out + ("" if proc.returncode == 0 else err[-1500:])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status, out = f"timed out after {limit:.0f}s", out[-1500:]
    return status, out, time.perf_counter() - start


def sharded_demo(limit: float) -> dict:
    with tempfile.TemporaryDirectory() as root:
        status, out, seconds = run_command(demo_command(root), limit)
    means = re.search(r"last epoch \(train mean\): (\{.*\})", out)
    return {"status": status, "wall_s": round(seconds, 1), "last_epoch": means.group(1) if means else None,
            "tail": None if status == 0 else out[-800:]}


def dpo_step(limit: float) -> dict:
    status, out, seconds = run_command(dpo_step_command(), limit)
    table = [line for line in out.splitlines() if line.split()[:1] and line.split()[0] in ("variant", "naive", "ours",
                                                                                            "ours_flex", "device")]
    return {"status": status, "wall_s": round(seconds, 1), "table": table or out[-800:]}


# ---- driver ----------------------------------------------------------------------------------
def run_part(name: str, args) -> dict:
    """One part in a fresh process under its time limit: its result, or what went wrong."""
    cmd = [sys.executable, __file__, "--part", name, "--peak-tflops", str(args.peak_tflops)]
    status, out, seconds = run_command(cmd, LIMITS_S[name])
    line = next((x for x in reversed(out.splitlines()) if x.startswith(RESULT_TAG)), None)
    if status == 0 and line:
        return json.loads(line[len(RESULT_TAG):])
    return {"status": status, "wall_s": round(seconds, 1), "tail": out[-800:]}


def one_part(name: str, args) -> dict:
    if name == "nan_repro":
        return nan_repro(tiny=args.dry_run)
    if name == "mfu":
        return mfu(tiny=args.dry_run, peak_tflops=args.peak_tflops)
    return sharded_demo(LIMITS_S[name] - 10) if name == "sharded_demo" else dpo_step(LIMITS_S[name] - 10)


def summary(results: dict) -> None:
    print("\n==== gpu_check summary ====")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    for name, result in results.items():
        if isinstance(result, dict) and isinstance(result.get("table"), list):
            print(f"{name}: status {result['status']}, {result['wall_s']}s")
            for line in result["table"]:
                print(f"    {line}")
        else:
            print(f"{name}: {json.dumps(result)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="on CPU: run parts 1 and 4 at toy size, name the commands of parts 2 and 3")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200: 989)")
    parser.add_argument("--part", choices=list(LIMITS_S), help=argparse.SUPPRESS)  # internal: one part, JSON out
    args = parser.parse_args()
    if args.part:
        print(RESULT_TAG + json.dumps(one_part(args.part, args)), flush=True)
        return 0
    if args.dry_run:
        results = {"nan_repro": nan_repro(tiny=True), "mfu": mfu(tiny=True, peak_tflops=args.peak_tflops),
                   "sharded_demo": "would run: " + " ".join(demo_command("<tmp>")[1:]),
                   "dpo_step": "would run: " + " ".join(dpo_step_command()[1:])}
        print(f"dry run: time limits per part on a GPU (s): {LIMITS_S}")
        summary(results)
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("no GPU: run with --dry-run on a CPU machine")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {}
    for name in LIMITS_S:
        start = time.perf_counter()
        results[name] = run_part(name, args)
        print(f"{name}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    summary(results)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
