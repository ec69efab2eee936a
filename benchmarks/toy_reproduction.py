"""Table 2 of the paper at toy scale: base, + SFT_self, + DPO without post-filter, + TPO.

Every stage is the real one: the toy base model (a LLaVA-OneVision trained from scratch on the toy
world, tpo/synthetic/toy_base.py) answers data_gen's questions on S_a and S_b, with the toy LLM
(data_gen/toy_llm.py) captioning, writing questions and post-filtering over HTTP; each arm is a
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

from data_gen.scripted_server import ScriptedServer
from tpo.synthetic.reproduction import PipelineRun, temporal_accuracy, toy_setting

ARMS = {"base": "base model", "sft_self": "+ SFT_self", "dpo": "+ DPO (no post-filter)", "tpo": "+ TPO"}


def run_seed(run: PipelineRun, seed: int, base_url: str) -> dict:
    data = run.generate(seed, base_url)
    models = {
        "sft_self": run.fit(f"seed-{seed}/sft_self", data["filtered"], seed, beta=0.0),
        "dpo": run.fit(f"seed-{seed}/dpo", data["unfiltered"], seed),
        "tpo": run.fit(f"seed-{seed}/tpo", data["filtered"], seed),
    }
    pairs = {"sft_self": data["filtered"], "dpo": data["unfiltered"], "tpo": data["filtered"]}
    results = {}
    for arm, model in models.items():
        summary = run.evaluate(model, f"seed-{seed}-{arm}")
        results[arm] = {"accuracy": summary["accuracy"], "temporal": temporal_accuracy(summary),
                        "by_category": summary["by_category"], "pairs": _count_lines(pairs[arm])}
    return results


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * std:4.1f}"


def table(per_seed: dict[int, dict]) -> str:
    lines = ["| model | accuracy (all) | temporal order | attribute | pairs |", "|---|---|---|---|---|"]
    for arm, label in ARMS.items():
        rows = [r[arm] for r in per_seed.values()]
        attribute = [r["by_category"]["attribute"]["accuracy"] for r in rows]
        pairs = "—" if arm == "base" else f"{statistics.mean(r['pairs'] for r in rows):.0f}"
        lines.append(f"| {label} | {_mean_std([r['accuracy'] for r in rows])} | "
                     f"{_mean_std([r['temporal'] for r in rows])} | {_mean_std(attribute)} | {pairs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced setting (a couple of minutes)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default runs/toy[-quick])")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--verbose", action="store_true", help="show data_gen / Lightning progress")
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / ("toy-quick" if args.quick else "toy")
    run = toy_setting(args.quick, out)
    seeds, run.quiet = args.seeds or ([0, 1] if args.quick else [0, 1, 2]), not args.verbose
    start = time.perf_counter()
    print(f"toy base model: {run.base_model}  ({time.perf_counter() - start:.0f}s)", flush=True)
    base = run.evaluate(run.base_model, "base")
    base_row = {"accuracy": base["accuracy"], "temporal": temporal_accuracy(base), "by_category": base["by_category"]}
    per_seed = {}
    with ScriptedServer() as server:
        for seed in seeds:
            per_seed[seed] = {"base": base_row, **run_seed(run, seed, server.base_url)}
            tpo = per_seed[seed]["tpo"]
            print(f"seed {seed}: temporal base {base_row['temporal']:.3f} sft_self "
                  f"{per_seed[seed]['sft_self']['temporal']:.3f} dpo {per_seed[seed]['dpo']['temporal']:.3f} "
                  f"tpo {tpo['temporal']:.3f}  ({time.perf_counter() - start:.0f}s)", flush=True)
    text = table(per_seed)
    gain = {arm: statistics.mean(r["tpo"]["temporal"] - r[arm]["temporal"] for r in per_seed.values())
            for arm in ("base", "sft_self")}
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"seeds": per_seed, "tpo_minus": gain}, indent=2))
    print(f"\nheld-out toy accuracy (%), mean ± std over seeds {seeds}; {len(seeds)} seeds, "
          f"{time.perf_counter() - start:.0f}s\n{text}\n")
    print(f"tpo_minus_base={100 * gain['base']:.2f} tpo_minus_sft_self={100 * gain['sft_self']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
