"""Table 2 of the paper at toy scale: base, + SFT_self, + DPO without post-filter, + TPO.

Every stage is the real one: the toy base model (a LLaVA-OneVision trained from scratch on the toy
world, toy/base.py) answers data_gen's questions on S_a and S_b, with the toy LLM
(toy/llm.py) captioning, writing questions and post-filtering over HTTP; each arm is a
`tpo fit` run; accuracy is measured on held-out toy clips with the evaluation code.

    python benchmarks/toy_reproduction.py            # full setting, 3 seeds
    python benchmarks/toy_reproduction.py --quick    # reduced setting (the test runs this)

Prints the table (also saved as OUT/table.md and OUT/results.json); the last line is
`tpo_minus_base=<x> tpo_minus_sft_self=<y>`: temporal-question accuracy differences in points.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from toy.llm import toy_server
from toy.reproduction import PipelineRun, in_format_pairs, temporal_accuracy, toy_setting

ARMS = {"base": "base model", "sft_self": "+ SFT_self", "dpo": "+ DPO (no post-filter)", "tpo": "+ TPO",
        "tpo_in_format": "+ TPO, in-format rejected only"}


def run_seed(run: PipelineRun, seed: int, base_url: str, tag: str = "") -> dict:
    data = run.generate(seed, base_url)
    pairs = {"sft_self": data["filtered"], "dpo": data["unfiltered"], "tpo": data["filtered"],
             "tpo_in_format": in_format_pairs(data["filtered"])}
    results = {}
    for arm, path in pairs.items():
        if not _count_lines(path):  # the reduced setting can leave no in-format pair
            print(f"seed {seed}: {path} holds no pair; arm {arm} left out", flush=True)
            continue
        sft = arm == "sft_self"  # beta 0, alpha 1: only the NLL of the preferred answers, whatever --alpha says
        model = run.fit(f"seed-{seed}/{arm}{tag}", path, seed, beta=0.0 if sft else None, alpha=1.0 if sft else None)
        summary = run.evaluate(model, f"seed-{seed}-{arm}{tag}")
        results[arm] = {"accuracy": summary["accuracy"], "temporal": temporal_accuracy(summary),
                        "by_category": summary["by_category"], "pairs": _count_lines(pairs[arm])}
    return results


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * std:4.1f}"


def table(per_seed: dict[int, dict]) -> str:
    lines = ["| model | all questions | temporal order | attribute | counting | pairs |", "|---|---|---|---|---|---|"]
    for arm, label in ARMS.items():
        rows = [r[arm] for r in per_seed.values() if arm in r]
        if not rows:
            continue
        cells = [[r["accuracy"] for r in rows], [r["temporal"] for r in rows]]
        cells += [[r["by_category"][c]["accuracy"] for r in rows] for c in ("attribute", "counting")]
        pairs = "—" if arm == "base" else f"{statistics.mean(r['pairs'] for r in rows):.0f}"
        lines.append(f"| {label} | " + " | ".join(_mean_std(c) for c in cells) + f" | {pairs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced setting (a couple of minutes)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default runs/toy[-quick])")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--beta", type=float, default=None, help="DPO beta of the DPO/TPO arms (default: the recipe's)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="SFT weight of the DPO/TPO arms (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every arm (default: the recipe's)")
    parser.add_argument("--verbose", action="store_true", help="show data_gen / Lightning progress")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / ("toy-quick" if args.quick else "toy")
    run = toy_setting(args.quick, out)
    run.beta, run.alpha, run.epochs = args.beta, args.alpha, args.epochs or run.epochs
    # runs with other settings are kept apart from the recipe's (every step is cached by name)
    tag = "".join(f"-{k}{v}" for k, v in (("beta", args.beta), ("alpha", args.alpha), ("epochs", args.epochs))
                  if v is not None)
    seeds, run.quiet = args.seeds or ([0, 1] if args.quick else [0, 1, 2]), not args.verbose
    start = time.perf_counter()
    print(f"toy base model: {run.base_model}  ({time.perf_counter() - start:.0f}s)", flush=True)
    base = run.evaluate(run.base_model, "base")
    base_row = {"accuracy": base["accuracy"], "temporal": temporal_accuracy(base), "by_category": base["by_category"]}
    per_seed = {}
    with toy_server() as server:
        for seed in seeds:
            per_seed[seed] = {"base": base_row, **run_seed(run, seed, server.base_url, tag)}
            temporal = " ".join(f"{arm} {row['temporal']:.3f}" for arm, row in per_seed[seed].items())
            print(f"seed {seed}: temporal-order accuracy {temporal}  ({time.perf_counter() - start:.0f}s)", flush=True)
    text = table(per_seed)
    gain = {arm: statistics.mean(r["tpo"]["temporal"] - r[arm]["temporal"] for r in per_seed.values())
            for arm in ("base", "sft_self")}
    (out / f"table{tag}.md").write_text(text + "\n")
    (out / f"results{tag}.json").write_text(json.dumps({"seeds": per_seed, "tpo_minus": gain}, indent=2))
    print(f"\nheld-out toy accuracy (%), mean ± std over seeds {seeds}; {len(seeds)} seeds, "
          f"{time.perf_counter() - start:.0f}s\n{text}\n")
    print(f"tpo_minus_base={100 * gain['base']:.2f} tpo_minus_sft_self={100 * gain['sft_self']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
