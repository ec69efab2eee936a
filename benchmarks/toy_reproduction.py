"""Table 2 of the paper at toy scale, pre-registered (issue 19): base, SFT_self, TPO, TPO with α = 0,
and TPO without the post-filter at the same number of pairs.

Every stage is the real one. Per seed: the one toy base model (toy/base.py, committed in
toy/base_model; its long-clip moment share calibrated on the dev split by
benchmarks/toy_calibration.py) answers data_gen's questions on S_a
and S_b, with the toy LLM (toy/llm.py) captioning, writing questions and post-filtering over HTTP;
each arm is one epoch of `tpo fit`; every model is scored by likelihood on the test split's long
clips (toy/world.py), which nothing was tuned on. Then accuracy at 8/16/32 frames and the toy
needle-in-a-haystack grid for the base and TPO.

    python benchmarks/toy_reproduction.py                # every seed missing from docs/toy/seeds, then the report
    python benchmarks/toy_reproduction.py --seeds 0 1    # those seeds
    python benchmarks/toy_reproduction.py --report       # only the report, from the seed JSONs
    python benchmarks/toy_reproduction.py --quick        # reduced setting (the test runs this)

A seed runs in its own process of one thread (``--jobs`` at a time) and writes
``docs/toy/seeds/seed-<n>.json`` when done: per arm its readout and every test question's
correctness, so the report (and its intervals) is computed from those files alone. The primary
endpoint is TPO − SFT_self on the moment questions, a 95 % t-interval over seeds; the last line is
`tpo_minus_base=<x> tpo_minus_sft_self=<y> ci_low=<z> ci_high=<w> seeds=<n>` (points).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from toy.readout import readout  # noqa: E402
from toy.reproduction import PipelineRun, in_form_share, toy_setting  # noqa: E402
from toy.stats import clip_bootstrap, decision, mean_std, seeds_for_half_width, t_interval  # noqa: E402
from toy.world import MOMENT  # noqa: E402
from tpo.clean_exit import run_and_exit  # noqa: E402

ARMS = {"base": "base model", "sft_self": "+ SFT_self", "tpo": "+ TPO", "tpo_alpha0": "+ TPO, α = 0",
        "tpo_nofilter": "+ TPO, no post-filter (same pairs)"}
FIT = {"sft_self": (0.0, None), "tpo": (None, None), "tpo_alpha0": (None, 0.0), "tpo_nofilter": (None, None)}
SEEDS = list(range(14))  # t(13)·2.5/√14 = 1.44 ≤ 1.5 points: the planned half-width at 2.5 points per-seed noise
PLANNED_NOISE, PLANNED_HALF_WIDTH = 0.025, 0.015
CURVE_FRAMES = (8, 16, 32)


# ---- one seed -------------------------------------------------------------------------------------

def run_seed(run: PipelineRun, seed: int, curves: bool = True) -> dict:
    from toy.llm import toy_server

    start = time.perf_counter()
    with toy_server() as server:
        data = run.generate(seed, server.base_url)
    kept = _count_lines(data["filtered"])
    pairs = {"sft_self": data["filtered"], "tpo": data["filtered"], "tpo_alpha0": data["filtered"],
             "tpo_nofilter": data["unfiltered"]}
    models = {"base": run.base_model()}
    for arm, path in pairs.items():
        beta, alpha = FIT[arm]
        models[arm] = run.fit(f"seed-{seed}/{arm}", path, seed, beta=beta, alpha=alpha,
                              max_pairs=kept if arm == "tpo_nofilter" else None)
    questions = run.questions("test")
    ids = sorted(questions)
    from omegaconf import OmegaConf

    lr = run.lr if run.lr is not None else OmegaConf.load(run.train_config).model.lr
    result = {"seed": seed, "share": run.base.long_moment_share, "lr": lr, "base_model": str(models["base"]),
              "pairs": {"filtered": kept, "unfiltered": _count_lines(data["unfiltered"])},
              "in_form_rejected": in_form_share(data["filtered"]), "arms": {}}
    for arm, model in models.items():
        run.evaluate(model, _name(seed, arm))
        rows = {r["id"]: r for r in run.predictions(_name(seed, arm))}
        result["arms"][arm] = {**readout(list(rows.values()), questions),
                               "correct": "".join("1" if rows[i]["correct"] else "0" for i in ids)}
    window = run.evaluate(models["base"], _name(seed, "base"), kind="window")
    result["arms"]["base"]["window"] = window["accuracy"]
    if curves:
        result["curves"] = {arm: _curves(run, seed, arm, models[arm], questions) for arm in ("base", "tpo")}
    result["seconds"] = round(time.perf_counter() - start)
    return result


def _curves(run: PipelineRun, seed: int, arm: str, model, questions: dict) -> dict:
    frames = {}
    for n in CURVE_FRAMES:
        run.evaluate(model, _name(seed, arm), num_frames=n)
        frames[str(n)] = readout(run.predictions(_name(seed, arm), num_frames=n), questions)["moment"]
    run.evaluate(model, _name(seed, arm), kind="niah")
    niah = [[r["meta"]["length"], r["meta"]["depth"], int(r["correct"])]
            for r in run.predictions(_name(seed, arm), kind="niah")]
    return {"frames": frames, "niah": niah}


def _name(seed: int, arm: str) -> str:
    return f"seed-{seed}-{arm}"


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# ---- the report -----------------------------------------------------------------------------------

def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def _interval(d: tuple) -> str:
    return f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]"


def table(per_seed: list[dict]) -> str:
    lines = ["| model | moment | after | before | order | pairs |", "|---|---|---|---|---|---|"]
    for arm, label in ARMS.items():
        cells = [_cell([r["arms"][arm][k] for r in per_seed]) for k in ("moment", "after", "before", "order")]
        pairs = "—" if arm == "base" else f"{np.mean([r['pairs']['filtered'] for r in per_seed]):.0f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {pairs} |")
    floors = [_cell([r["arms"]["base"][k] for r in per_seed]) for k in ("after_floor", "before_floor")]
    lines.append(f"| floor (knows first/last, not the moment) | | {floors[0]} | {floors[1]} | | |")
    window = _cell([r["arms"]["base"]["window"] for r in per_seed])
    lines.append(f"| base, shown only the window around the moment | {window} | | | | |")
    return "\n".join(lines)


def per_seed_table(per_seed: list[dict]) -> str:
    head = "| seed | " + " | ".join(ARMS) + " | TPO − SFT_self | kept pairs | rejected in form |"
    lines = [head, "|---" * (len(ARMS) + 4) + "|"]
    for r in per_seed:
        moment = [r["arms"][a]["moment"] for a in ARMS]
        gain = r["arms"]["tpo"]["moment"] - r["arms"]["sft_self"]["moment"]
        lines.append(f"| {r['seed']} | " + " | ".join(f"{100 * m:.1f}" for m in moment)
                     + f" | {100 * gain:+.1f} | {r['pairs']['filtered']} | {100 * r['in_form_rejected']:.0f} % |")
    return "\n".join(lines)


def differences(per_seed: list[dict], clips: list[str | None]) -> dict:
    """Per comparison: the t-interval over seeds and the seed-and-clip bootstrap (moment questions)."""
    moment = [k for k, clip in enumerate(clips) if clip is not None]
    out = {}
    for a, b in (("tpo", "sft_self"), ("tpo", "base"), ("tpo", "tpo_alpha0"), ("tpo", "tpo_nofilter"),
                 ("sft_self", "base")):
        per = [r["arms"][a]["moment"] - r["arms"][b]["moment"] for r in per_seed]
        bits = np.array([[float(r["arms"][a]["correct"][k]) - float(r["arms"][b]["correct"][k]) for k in moment]
                         for r in per_seed])
        out[f"{a}-{b}"] = {"t": t_interval(per), "bootstrap": clip_bootstrap(bits, [clips[k] for k in moment])}
    return out


def curve_text(per_seed: list[dict]) -> str:
    with_curves = [r for r in per_seed if "curves" in r]
    if not with_curves:
        return ""
    lines = ["Moment questions (likelihood) vs input frames:"]
    for arm in ("base", "tpo"):
        cells = ", ".join(f"{n} frames {_cell([r['curves'][arm]['frames'][str(n)] for r in with_curves])}"
                          for n in CURVE_FRAMES)
        lines.append(f"- {ARMS[arm].removeprefix('+ ')}: {cells}")
    return "\n".join(lines)


def niah_grids(per_seed: list[dict]) -> dict:
    from tpo.evaluate.niah import niah_grid

    return {arm: niah_grid([{"meta": {"length": n, "depth": d}, "correct": c, "error": None}
                            for r in per_seed if "curves" in r for n, d, c in r["curves"][arm]["niah"]])
            for arm in ("base", "tpo")}


def grid_text(grid: dict) -> str:
    head = "| frames | " + " | ".join(f"depth {d:g}" for d in grid["depths"]) + " |"
    rows = [f"| {n} | " + " | ".join("—" if v is None else f"{100 * v:.0f}" for v in row) + " |"
            for n, row in zip(grid["lengths"], grid["accuracy"])]
    return "\n".join([head, "|---" * (len(grid["depths"]) + 1) + "|", *rows])


def plots(per_seed: list[dict], grids: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tpo.evaluate.niah import plot_heatmap

    with_curves = [r for r in per_seed if "curves" in r]
    if not with_curves:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm in ("base", "tpo"):
        stats = [mean_std([r["curves"][arm]["frames"][str(n)] for r in with_curves]) for n in CURVE_FRAMES]
        ax.errorbar(CURVE_FRAMES, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o",
                    capsize=3, label=ARMS[arm].removeprefix("+ "))
    ax.set_xscale("log", base=2)
    ax.set_xticks(CURVE_FRAMES, [str(n) for n in CURVE_FRAMES])
    ax.set_xlabel("input frames")
    ax.set_ylabel("moment questions, accuracy (%)")
    ax.set_title("Toy Fig. 3a: accuracy vs input frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frames_curve.png", dpi=120)
    plt.close(fig)
    for arm, grid in grids.items():
        plot_heatmap(grid, out / f"niah_{arm}.png", title=f"Toy haystacks: {ARMS[arm].removeprefix('+ ')}")


def report(per_seed: list[dict], run: PipelineRun, out: Path) -> str:
    rows = {r["id"]: r for r in map(json.loads, run.split("test").read_text().splitlines())}
    ids = sorted(rows)
    clips = [rows[i]["meta"]["clip"] if rows[i]["category"] == MOMENT else None for i in ids]
    diffs = differences(per_seed, clips)
    primary = diffs["tpo-sft_self"]["t"]
    n = len(per_seed)
    observed_sd = mean_std([r["arms"]["tpo"]["moment"] - r["arms"]["sft_self"]["moment"] for r in per_seed])[1]
    text = [f"Test split: {sum(c is not None for c in clips)} moment questions on {len(set(filter(None, clips)))} "
            f"clips, {len(ids)} questions in all; likelihood scoring; seeds {[r['seed'] for r in per_seed]}.", "",
            table(per_seed), "", per_seed_table(per_seed), "",
            f"Primary: TPO − SFT_self on the moment questions, 95 % t-interval over {n} seeds: {_interval(primary)} "
            f"points → **{decision(primary[1], primary[2])}** (planned: ±{100 * PLANNED_HALF_WIDTH:g} at "
            f"{100 * PLANNED_NOISE:g} points per-seed noise, {seeds_for_half_width(PLANNED_NOISE, PLANNED_HALF_WIDTH)} "
            f"seeds; observed per-seed sd {100 * observed_sd:.2f}).", "",
            "Secondary (moment questions; t-interval over seeds / bootstrap over seeds and clips):"]
    for key, d in diffs.items():
        text.append(f"- {key.replace('-', ' − ')}: {_interval(d['t'])} / {_interval(d['bootstrap'])}")
    grids = niah_grids(per_seed)
    if curve_text(per_seed):
        text += ["", curve_text(per_seed)]
        for arm, grid in grids.items():
            text += ["", f"Needle in a toy haystack, {ARMS[arm].removeprefix('+ ')} (accuracy %, pooled over seeds):",
                     grid_text(grid)]
    plots(per_seed, grids, out)
    return "\n".join(text)


def _last_line(per_seed: list[dict], primary: tuple) -> str:
    base = np.mean([r["arms"]["tpo"]["moment"] - r["arms"]["base"]["moment"] for r in per_seed])
    return (f"tpo_minus_base={100 * base:.2f} tpo_minus_sft_self={100 * primary[0]:.2f} "
            f"ci_low={100 * primary[1]:.2f} ci_high={100 * primary[2]:.2f} seeds={len(per_seed)}")


# ---- driver ---------------------------------------------------------------------------------------

def _run_missing(args, seeds: list[int]) -> None:
    """Every seed without a result file, ``--jobs`` worker processes (one thread each) at a time."""
    missing = [s for s in seeds if not (args.results / f"seed-{s}.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running: list[tuple[int, subprocess.Popen]] = []
    while missing or running:
        while missing and len(running) < args.jobs:
            seed = missing.pop(0)
            cmd = [sys.executable, __file__, "--worker", str(seed), "--out", str(args.out),
                   "--results", str(args.results)] + (["--quick"] if args.quick else [])
            running.append((seed, subprocess.Popen(cmd, env=env)))
        time.sleep(1)
        for seed, worker in list(running):
            if worker.poll() is not None:
                running.remove((seed, worker))
                status = "done" if worker.returncode == 0 else f"FAILED (status {worker.returncode})"
                print(f"seed {seed}: {status}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced setting (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default runs/toy[-quick])")
    parser.add_argument("--results", type=Path, default=None,
                        help="seed JSONs (default docs/toy/seeds, or OUT/seeds with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {SEEDS[0]}..{SEEDS[-1]}")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (one core each)")
    parser.add_argument("--report", action="store_true", help="only the report, from the seed JSONs")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out or REPO / "runs" / ("toy-quick" if args.quick else "toy")
    args.results = args.results or (args.out / "seeds" if args.quick else REPO / "docs" / "toy" / "seeds")
    run = toy_setting(args.quick, args.out)
    if args.worker is not None:
        result = run_seed(run, args.worker)
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / f"seed-{args.worker}.json").write_text(json.dumps(result) + "\n")
        return 0
    seeds = args.seeds or ([0, 1] if args.quick else SEEDS)
    if not args.report:
        _run_missing(args, seeds)
    per_seed = [json.loads((args.results / f"seed-{s}.json").read_text()) for s in seeds
                if (args.results / f"seed-{s}.json").exists()]
    if len(per_seed) < 2:
        raise SystemExit(f"error: {len(per_seed)} seed result(s) under {args.results}; the report needs at least 2")
    out = args.results.parent
    text = report(per_seed, run, out)
    (out / "table.md").write_text(text + "\n")
    primary = t_interval([r["arms"]["tpo"]["moment"] - r["arms"]["sft_self"]["moment"] for r in per_seed])
    print(f"\nheld-out toy accuracy (%), mean ± std over seeds\n{text}\n")
    print(_last_line(per_seed, primary))
    return 0


if __name__ == "__main__":
    run_and_exit(main)
