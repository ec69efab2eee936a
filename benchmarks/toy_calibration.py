"""Calibrate the toy experiment on the dev split, by rules fixed before any TPO run (issue 19).

Stage ``base``: the base model's share of long-clip moment questions (``long_moment_share``).
There is one base (issue 31), and the share acts only in its last ``share_steps``: every share's
base branches from one common checkpoint. Shares are tried in ``SHARES`` order; the first whose dev
long-clip moment accuracy (likelihood) lies in ``TARGET``, with window accuracy at least
``MIN_WINDOW`` (each moment kind at least ``MIN_WINDOW_KIND``) and order accuracy at least
``MIN_ORDER``, is taken. If the accuracy jumps over ``TARGET`` between two grid shares, the interval
is bisected up to ``BISECTIONS`` times.

Stage ``lr``: the toy learning rate. With the chosen base, on the same two seeds, data_gen's
filtered pairs train SFT_self and TPO at each of ``LRS`` (1 epoch); the rate with the highest
mean dev moment accuracy over both arms and seeds is taken (one rate for every arm).

    python benchmarks/toy_calibration.py --stage base   # then freeze ToyBaseConfig.long_moment_share
    python benchmarks/toy_calibration.py --stage lr     # then freeze lightning_configs/toy_tpo.yaml's lr
    python benchmarks/toy_calibration.py --quick        # the reduced setting the tests run

Each (seed, setting) result is a small JSON under ``docs/toy/calibration/`` (``--results``), written
by a worker process as soon as it is done (one thread each; the lr stage runs one process per seed),
so an interrupted calibration goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toy.base import ToyBaseConfig, recipe_name  # noqa: E402
from toy.readout import MOMENT_KINDS, readout  # noqa: E402
from toy.reproduction import CALIBRATION_SEEDS, PipelineRun, toy_setting  # noqa: E402
from tpo.clean_exit import run_and_exit  # noqa: E402

SHARES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
TARGET = (0.45, 0.65)
MIN_WINDOW, MIN_WINDOW_KIND, MIN_ORDER = 0.90, 0.85, 0.95
BASE_SEED = 0  # the one base's seed (its clips and initial weights)
BISECTIONS = 3
LRS = (3e-5, 1e-4, 3e-4)
ARMS = {"sft_self": 0.0, "tpo": None}  # beta (None: the recipe's)


def meets(point: dict) -> bool:
    return (TARGET[0] <= point["moment"] <= TARGET[1] and point["window"] >= MIN_WINDOW and point["order"] >= MIN_ORDER
            and all(point[f"window_{kind}"] >= MIN_WINDOW_KIND for kind in MOMENT_KINDS))


def choose_share(evaluate) -> tuple[float | None, list[tuple[float, dict]]]:
    """The base rule: ``evaluate(share)`` gives the base's dev readout; returns the chosen share
    (``None`` if no share meets the rule) and every share tried, in order."""
    tried, below = [], None
    for share in SHARES:
        point = evaluate(share)
        tried.append((share, point))
        if meets(point):
            return share, tried
        if point["moment"] > TARGET[1] and below is not None:
            low, high = below, share
            for _ in range(BISECTIONS):
                mid = round((low + high) / 2, 4)
                point = evaluate(mid)
                tried.append((mid, point))
                if meets(point):
                    return mid, tried
                if point["moment"] < TARGET[0]:
                    low = mid
                elif point["moment"] > TARGET[1]:
                    high = mid
                else:
                    break
            return None, tried
        if point["moment"] < TARGET[0]:
            below = share
    return None, tried


# ---- workers: one seed each, in their own process ---------------------------------------------------

def base_point(run: PipelineRun, seed: int, share: float) -> dict:
    base = run.base_model(long_moment_share=share)
    name = f"calibration-base-share-{share}"
    run.evaluate(base, name, split="dev")
    run.evaluate(base, name, split="dev", kind="window")
    point = readout(run.predictions(name, split="dev"), run.questions("dev"))
    window = readout(run.predictions(name, split="dev", kind="window"), run.questions("dev"))
    return {**point, "window": window["moment"], **{f"window_{k}": window[k] for k in MOMENT_KINDS},
            "seed": seed, "share": share, "base_model": str(base)}


def lr_points(run: PipelineRun, seed: int, share: float) -> dict:
    from toy.llm import toy_server

    run.base = replace(run.base, long_moment_share=share)  # the chosen base
    with toy_server() as server:
        data = run.generate(seed, server.base_url)["filtered"]
    points = {"seed": seed, "share": share, "pairs": sum(1 for line in data.open() if line.strip())}
    for lr in LRS:
        run.lr = lr
        for arm, beta in ARMS.items():
            model = run.fit(f"seed-{seed}/calibration-{arm}-lr{lr}", data, seed, beta=beta)
            name = f"calibration-seed-{seed}-{arm}-lr{lr}"
            run.evaluate(model, name, split="dev")
            points[f"{arm}/{lr}"] = readout(run.predictions(name, split="dev"), run.questions("dev"))
    return points


def _result_path(results: Path, stage: str, seed: int, share: float, base: ToyBaseConfig) -> Path:
    """The base stage's points live in their recipe's folder (``recipe-<name>``, with its ``recipe.json``)."""
    folder = results / stage / (f"recipe-{recipe_name(base)}" if stage == "base" else "")
    return folder / f"seed-{seed}-share-{share}.json"


def _recipe_dir(args) -> Path:
    return args.results / "base" / f"recipe-{recipe_name(args.base)}"


def _run_workers(args, stage: str, share: float) -> list[dict]:
    """The stage's result at ``share`` (the base's, or every calibration seed's learning rates),
    computing the missing ones in parallel worker processes."""
    seeds = (BASE_SEED,) if stage == "base" else CALIBRATION_SEEDS
    paths = {seed: _result_path(args.results, stage, seed, share, args.base) for seed in seeds}
    missing = [seed for seed, path in paths.items() if not path.exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", stage, "--seed", str(seed), "--share",
                                 str(share), "--out", str(args.out), "--results", str(args.results)]
                                + (["--quick"] if args.quick else []), env=env) for seed in missing]
    for worker in workers:
        if worker.wait() != 0:
            raise SystemExit(f"error: a calibration worker ({stage}, share {share}) failed with status "
                             f"{worker.returncode}")
    return [json.loads(path.read_text()) for path in paths.values()]


def _mean_point(points: list[dict]) -> dict:
    keys = ("moment", "moment_floor", "order", "window", *MOMENT_KINDS, *(f"window_{k}" for k in MOMENT_KINDS))
    return {k: sum(p[k] for p in points) / len(points) for k in keys}


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def stage_base(args) -> dict:
    rows = []

    def evaluate(share: float) -> dict:
        points = _run_workers(args, "base", share)
        mean = _mean_point(points)
        rows.append((share, points, mean))
        print(f"share {share:<6} long moment {_pct(mean['moment'])} (after {_pct(mean['after'])}, before "
              f"{_pct(mean['before'])}; floor {_pct(mean['moment_floor'])})  window {_pct(mean['window'])} (after "
              f"{_pct(mean['window_after'])}, before {_pct(mean['window_before'])})  order {_pct(mean['order'])}",
              flush=True)
        return mean

    chosen, _ = choose_share(evaluate)
    summary = {"rule": {"shares": SHARES, "target": TARGET, "min_window": MIN_WINDOW,
                        "min_window_kind": MIN_WINDOW_KIND, "min_order": MIN_ORDER, "bisections": BISECTIONS,
                        "base_seed": BASE_SEED},
               "tried": [{"share": s, "mean": m, "per_seed": p} for s, p, m in rows], "chosen": chosen}
    _recipe_dir(args).joinpath("base.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"chosen long_moment_share={chosen}")
    return summary


def stage_lr(args) -> dict:
    share = args.share if args.share is not None else json.loads(_recipe_dir(args).joinpath("base.json").read_text())["chosen"]
    if share is None:
        raise SystemExit("error: the base stage chose no share; there is no base to tune the learning rate on")
    points = _run_workers(args, "lr", share)
    means = {lr: sum(p[f"{arm}/{lr}"]["moment"] for p in points for arm in ARMS) / (len(points) * len(ARMS))
             for lr in LRS}
    for lr in LRS:
        arms = "  ".join(f"{arm} {_pct(sum(p[f'{arm}/{lr}']['moment'] for p in points) / len(points))}"
                         for arm in ARMS)
        print(f"lr {lr:<7g} dev moment {arms}  mean {_pct(means[lr])}", flush=True)
    chosen = max(LRS, key=means.get)
    summary = {"rule": {"lrs": LRS, "arms": list(ARMS), "seeds": CALIBRATION_SEEDS}, "share": share,
               "mean_moment": {str(lr): m for lr, m in means.items()}, "per_seed": points, "chosen": chosen}
    (args.results / "lr.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"chosen lr={chosen:g}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("base", "lr", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="the reduced setting (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default runs/toy[-quick])")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the results JSONs go (default docs/toy/calibration, or OUT/calibration with "
                             "--quick)")
    parser.add_argument("--share", type=float, default=None, help="the lr stage's base share (default: base.json's)")
    parser.add_argument("--worker", choices=("base", "lr"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "runs" / ("toy-quick" if args.quick else "toy")
    args.results = args.results or (args.out / "calibration" if args.quick else REPO / "docs" / "toy" / "calibration")
    run = toy_setting(args.quick, args.out)
    if args.worker:
        point = (base_point if args.worker == "base" else lr_points)(run, args.seed, args.share)
        path = _result_path(args.results, args.worker, args.seed, args.share, run.base)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(point, indent=2) + "\n")
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    args.base = run.base
    _recipe_dir(args).mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in asdict(run.base).items() if k != "long_moment_share"}
    _recipe_dir(args).joinpath("recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    if args.stage in ("base", "all"):
        stage_base(args)
    if args.stage in ("lr", "all"):
        stage_lr(args)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
