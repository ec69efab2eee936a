"""Table 2 of the paper at toy scale: base, + SFT_self, + DPO without post-filter, + TPO, + TPO with α = 0.

Every stage is the real one. Per seed: a toy base model (a LLaVA-OneVision trained from scratch on
mostly short clips, toy/base.py) answers data_gen's questions on S_a and S_b, with the toy LLM
(toy/llm.py) captioning, writing questions and post-filtering over HTTP; each arm is a `tpo fit`
run; every model is evaluated on held-out long clips (toy/world.py) by generation and by likelihood
scoring. Then the paper's Fig. 3a (accuracy vs input frames) and Fig. 5 (needle in a haystack, base
vs TPO) from the same models.

    python benchmarks/toy_reproduction.py            # full setting, 3 seeds
    python benchmarks/toy_reproduction.py --quick    # reduced setting (the test runs this)

Prints the tables (also saved under OUT: table.md, results.json, frames_curve.png, niah_*.png); the
last line is `tpo_minus_base=<x> tpo_minus_sft_self=<y> ci_low=<z>`: moment-question accuracy by
likelihood scoring, differences in points averaged over seeds, and the lower end of the 95 %
paired bootstrap interval of TPO − SFT_self.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from toy.llm import toy_server
from toy.reproduction import PipelineRun, in_form_share, toy_setting
from toy.stats import mean_std, paired_bootstrap
from toy.world import MOMENT
from tpo.clean_exit import run_and_exit
from tpo.evaluate.niah import niah_grid, plot_heatmap

ARMS = {"base": "base model", "sft_self": "+ SFT_self", "dpo": "+ DPO + SFT, no post-filter", "tpo": "+ TPO",
        "tpo_alpha0": "+ TPO, α = 0"}
SCORINGS = {"likelihood": "likelihood scoring", "generate": "generation"}
FIT = {"sft_self": (0.0, 1.0), "tpo_alpha0": (None, 0.0)}  # (beta, alpha); SFT_self: only the NLL of the chosen


def readout(summary: dict) -> dict:
    """Accuracy on all questions, on the moment questions and on the others (order, counting)."""
    cats = summary["by_category"]
    others = [c for name, c in cats.items() if name != MOMENT]
    return {"all": summary["accuracy"], "moment": cats[MOMENT]["accuracy"],
            "others": sum(c["correct"] for c in others) / max(1, sum(c["scored"] for c in others))}


def run_seed(run: PipelineRun, seed: int, base_url: str, tag: str) -> dict:
    data = run.generate(seed, base_url)
    pairs = {"sft_self": data["filtered"], "dpo": data["unfiltered"], "tpo": data["filtered"],
             "tpo_alpha0": data["filtered"]}
    models = {"base": run.base_model(seed)}
    for arm, path in pairs.items():
        beta, alpha = FIT.get(arm, (None, None))
        models[arm] = run.fit(f"seed-{seed}/{arm}{tag}", path, seed, beta=beta, alpha=alpha)
    results = {"models": {arm: str(m) for arm, m in models.items()},
               "pairs": {arm: _count_lines(p) for arm, p in pairs.items()},
               "in_form_rejected": in_form_share(data["filtered"])}
    for arm in models:
        results[arm] = {s: readout(run.evaluate(models[arm], _name(seed, arm, tag), s)) for s in SCORINGS}
    window = {s: run.evaluate(models["base"], _name(seed, "base", tag), s, split="window") for s in SCORINGS}
    results["base"]["window"] = {s: summary["accuracy"] for s, summary in window.items()}
    return results


def _name(seed: int, arm: str, tag: str) -> str:
    return f"seed-{seed}-{arm}{'' if arm == 'base' else tag}"


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def table(per_seed: dict[int, dict], scoring: str) -> str:
    lines = [f"**{SCORINGS[scoring]}**", "", "| model | moment questions | order + counting | all questions | pairs |",
             "|---|---|---|---|---|"]
    for arm, label in ARMS.items():
        cells = [_cell([r[arm][scoring][k] for r in per_seed.values()]) for k in ("moment", "others", "all")]
        pairs = "—" if arm == "base" else f"{np.mean([r['pairs'][arm] for r in per_seed.values()]):.0f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {pairs} |")
    window = _cell([r["base"]["window"][scoring] for r in per_seed.values()])
    lines.append(f"| base model, shown only the moment's window | {window} | | | |")
    return "\n".join(lines)


def paired(run: PipelineRun, seeds: list[int], arm: str, other: str, scoring: str, tag: str) -> tuple:
    """The paired difference ``arm − other`` on the moment questions: (mean, ci_low, ci_high). A
    question either model could not be asked (a video read error) is left out, as in the table."""
    rows = [[{r["id"]: r for r in run.predictions(_name(seed, x, tag), scoring)} for x in (arm, other)]
            for seed in seeds]
    ids = sorted(i for i, r in rows[0][0].items() if r["category"] == MOMENT
                 and all(p[i]["error"] is None for pair in rows for p in pair))
    return paired_bootstrap([[float(a[i]["correct"]) - float(b[i]["correct"]) for i in ids] for a, b in rows])


def frames_curve(run: PipelineRun, per_seed: dict, counts: list[int], tag: str, out: Path) -> dict:
    """Moment-question accuracy (likelihood) of the base and TPO at each number of input frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = {}
    for arm in ("base", "tpo"):
        curve[arm] = [[readout(run.evaluate(per_seed[seed]["models"][arm], _name(seed, arm, tag), "likelihood",
                                            num_frames=n))["moment"] for seed in per_seed] for n in counts]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, rows in curve.items():
        mean, std = zip(*(mean_std(r) for r in rows))
        ax.errorbar(counts, [100 * m for m in mean], yerr=[100 * s for s in std], marker="o", capsize=3,
                    label=_short(arm))
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_xlabel("input frames")
    ax.set_ylabel("moment questions, accuracy (%)")
    ax.set_title("Toy Fig. 3a: accuracy vs input frames")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frames_curve.png", dpi=120)
    plt.close(fig)
    return {"frames": counts, **curve}


def niah(run: PipelineRun, per_seed: dict, tag: str, out: Path) -> dict:
    """The needle-in-a-haystack grid of the base and of TPO, pooled over seeds (likelihood scoring)."""
    grids = {}
    for arm in ("base", "tpo"):
        rows = []
        for seed in per_seed:
            run.evaluate(per_seed[seed]["models"][arm], _name(seed, arm, tag), "likelihood", split="niah")
            rows += run.predictions(_name(seed, arm, tag), "likelihood", split="niah")
        grids[arm] = niah_grid(rows)
        plot_heatmap(grids[arm], out / f"niah_{arm}.png", title=f"Toy haystacks: {_short(arm)}")
    return grids


def _grid_text(grid: dict) -> str:
    head = "| frames | " + " | ".join(f"depth {d:g}" for d in grid["depths"]) + " |"
    rows = [f"| {n} | " + " | ".join("—" if v is None else f"{100 * v:.0f}" for v in row) + " |"
            for n, row in zip(grid["lengths"], grid["accuracy"])]
    return "\n".join([head, "|---" * (len(grid["depths"]) + 1) + "|", *rows])


def report(per_seed: dict, differences: dict, curve: dict, grids: dict) -> str:
    text = "\n\n".join(table(per_seed, s) for s in SCORINGS)
    text += ("\n\nPaired differences on the moment questions (points; 95 % bootstrap interval over seeds and "
             "questions):\n")
    text += "\n".join(f"- {SCORINGS[s]}: {_short(a)} − {_short(b)} = {100 * d[0]:+.1f} [{100 * d[1]:+.1f}, "
                      f"{100 * d[2]:+.1f}]" for (a, b, s), d in differences.items())
    share = ", ".join(f"seed {seed} {100 * r['in_form_rejected']:.0f} %" for seed, r in per_seed.items())
    text += f"\n\nKept pairs whose rejected answer is in the answer form (an object or a motion): {share}"
    text += ("\n\nMoment questions (likelihood) vs input frames (64 repeats some frames of the 6- and 7-object "
             "clips):\n")
    text += "\n".join(f"- {_short(arm)}: " + ", ".join(f"{n} frames {_cell(v)}" for n, v in zip(curve["frames"],
                                                                                                curve[arm]))
                      for arm in ("base", "tpo"))
    return text + "".join(f"\n\nNeedle in a toy haystack, {_short(arm)} (accuracy %):\n" + _grid_text(g)
                          for arm, g in grids.items())


def _short(arm: str) -> str:
    return ARMS[arm].removeprefix("+ ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced setting (a few minutes)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default runs/toy[-quick])")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--beta", type=float, default=None,
                        help="DPO beta of the DPO/TPO arms (default: the recipe's)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="SFT weight of the DPO/TPO arms (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every arm (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate of every arm (default: the recipe's)")
    parser.add_argument("--verbose", action="store_true", help="show data_gen / Lightning progress")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / ("toy-quick" if args.quick else "toy")
    run = toy_setting(args.quick, out)
    run.beta, run.alpha, run.epochs, run.lr = args.beta, args.alpha, args.epochs or run.epochs, args.lr
    # runs with other settings are kept apart from the recipe's (every step is cached by name)
    tag = "".join(f"-{k}{v}" for k, v in (("beta", args.beta), ("alpha", args.alpha), ("epochs", args.epochs),
                                          ("lr", args.lr)) if v is not None)
    seeds, run.quiet = args.seeds or ([0, 1] if args.quick else [0, 1, 2]), not args.verbose
    start = time.perf_counter()
    per_seed = {}
    with toy_server() as server:
        for seed in seeds:
            per_seed[seed] = run_seed(run, seed, server.base_url, tag)
            moment = " ".join(f"{arm} {per_seed[seed][arm]['likelihood']['moment']:.3f}" for arm in ARMS)
            print(f"seed {seed}: moment questions (likelihood) {moment}  ({time.perf_counter() - start:.0f}s)",
                  flush=True)
    differences = {(a, b, s): paired(run, seeds, a, b, s, tag)
                   for s in SCORINGS for a, b in (("tpo", "sft_self"), ("tpo", "base"), ("tpo", "tpo_alpha0"))}
    counts = [8, 32] if args.quick else [8, 16, 32, 64]
    curve = frames_curve(run, per_seed, counts, tag, out)
    grids = niah(run, per_seed, tag, out)
    text = report(per_seed, differences, curve, grids)
    (out / f"table{tag}.md").write_text(text + "\n")
    (out / f"results{tag}.json").write_text(json.dumps(
        {"seeds": per_seed, "differences": {f"{a}-{b}/{s}": d for (a, b, s), d in differences.items()},
         "frames_curve": curve, "niah": grids}, indent=2))
    print(f"\nheld-out toy accuracy (%), mean ± std over seeds {seeds}; {time.perf_counter() - start:.0f}s\n"
          f"{text}\n")
    base = np.mean([r["tpo"]["likelihood"]["moment"] - r["base"]["likelihood"]["moment"] for r in per_seed.values()])
    gain, low, _ = differences[("tpo", "sft_self", "likelihood")]
    print(f"tpo_minus_base={100 * base:.2f} tpo_minus_sft_self={100 * gain:.2f} ci_low={100 * low:.2f}")
    return 0


if __name__ == "__main__":
    run_and_exit(main)
