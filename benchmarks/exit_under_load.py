"""How often a finished 2-process run exits abnormally, with a CPU hog beside it.

Every rank is started here (as torchrun or a cluster scheduler would: RANK, LOCAL_RANK, WORLD_SIZE
and MASTER_* in its environment), so each rank's own exit status is seen, not only rank 0's.
Two runs, each ``--runs`` times:

- ``demo``: the sharded demo, ``python -m tpo fit --config lightning_configs/demo_fsdp.yaml``
  (FSDP2, gloo, checkpoints and the Hugging Face export);
- ``memory``: the worker of ``benchmarks/sharded_load_memory.py --worker sharded`` (the CI failure
  of issue 18: status -6 after ``destroy_process_group()``).

Meanwhile ``--hog`` processes spin on the CPU. A rank is abnormal if its status is not 0 or its
stderr says ``terminate called``.

    python benchmarks/exit_under_load.py [--runs 20] [--hog 2] [--cases demo memory] [--code DIR]

``--code DIR`` runs another checkout's code (e.g. the commit before a fix) with this harness.
The last line is ``abnormal_exits=<n> ranks=<m>``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def spin() -> None:
    while True:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], code: Path, cwd: Path, world: int = 2, timeout: float = 900) -> list[tuple[int, str]]:
    """Start ``cmd`` once per rank; each rank's (exit status, stderr tail)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world), NODE_RANK="0",
               PYTHONPATH=os.pathsep.join([str(code), env.get("PYTHONPATH", "")]))
    logs = [tempfile.TemporaryFile("w+") for _ in range(world)]  # files, not pipes: a full pipe would block a rank
    procs = [subprocess.Popen(cmd, cwd=cwd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), text=True,
                              stdout=subprocess.DEVNULL, stderr=logs[r]) for r in range(world)]
    results = []
    for p, log in zip(procs, logs):
        try:
            p.wait(timeout=timeout)
            note = ""
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            note = "\n(timed out)"
        log.seek(0)
        results.append((p.returncode, log.read()[-2000:] + note))
        log.close()
    return results


def demo_command(code: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "tpo", "fit", "--config", str(code / "lightning_configs" / "demo_fsdp.yaml"),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]


def memory_command(code: Path, model_dir: Path) -> list[str]:
    return [sys.executable, str(code / "benchmarks" / "sharded_load_memory.py"), "--worker", "sharded",
            "--out", str(model_dir)]


def build_memory_checkpoint(code: Path, model_dir: Path) -> None:
    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
              "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); "
              "b.build_checkpoint(__import__('pathlib').Path(sys.argv[2]), hidden=1024, layers=4, intermediate=4096)")
    subprocess.run([sys.executable, "-c", script, str(code / "benchmarks" / "sharded_load_memory.py"), str(model_dir)],
                   check=True, env=dict(os.environ, PYTHONPATH=str(code)))


def abnormal(status: int, stderr: str) -> bool:
    return status != 0 or "terminate called" in stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--hog", type=int, default=2, help="busy-looping processes beside the runs")
    parser.add_argument("--cases", nargs="+", choices=["demo", "memory"], default=["demo", "memory"])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose code runs (default: this one)")
    args = parser.parse_args()
    code = args.code.resolve()
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.hog)]
    for h in hogs:
        h.start()
    statuses: dict[str, Counter] = {case: Counter() for case in args.cases}
    bad = total = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if "memory" in args.cases:
                build_memory_checkpoint(code, tmp / "model")
            for i in range(args.runs):
                for case in args.cases:
                    start = time.perf_counter()
                    cmd = demo_command(code, tmp / f"demo{i}") if case == "demo" else memory_command(code, tmp / "model")
                    for rank, (status, err) in enumerate(launch(cmd, code, cwd=tmp)):
                        total += 1
                        statuses[case][status] += 1
                        if abnormal(status, err):
                            bad += 1
                            print(f"run {i} {case} rank {rank}: status {status}\n{err[-600:]}", flush=True)
                    print(f"run {i} {case}: {time.perf_counter() - start:.0f}s, statuses so far {dict(statuses[case])}",
                          flush=True)
    finally:
        for h in hogs:
            h.terminate()
    print(f"code {code}, {args.runs} runs of {args.cases} with {args.hog} hog process(es): "
          + ", ".join(f"{case} exit statuses {dict(c)}" for case, c in statuses.items()))
    print(f"abnormal_exits={bad} ranks={total}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from tpo.clean_exit import run_and_exit

    run_and_exit(main)
