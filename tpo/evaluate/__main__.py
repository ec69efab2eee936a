"""``tpo evaluate mcq|niah-make|niah|table`` (or ``python -m tpo.evaluate ...``): evaluate a model, or tabulate
several evaluated models; see ``--help`` of each."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tpo.clean_exit import run_and_exit
from tpo.data.frames import NUM_FRAMES
from tpo.data.decoders import backend_name
from tpo.errors import TPOError, status_of
from tpo.evaluate.lmms_eval import FRAME_RULES, LMMS_EVAL_VERSION, VARIANTS
from tpo.evaluate.protocol import PROTOCOLS, Protocol

DTYPES = ("bfloat16", "float16", "float32")
FAILING_SHARE = 0.5  # a run in which more than this share of the items errored fails
RERUNS = ("Rerunning into the same --out resumes: answered items are kept and items that errored (a video or "
          "subtitle file missing or unreadable) are asked again. The settings that change the answers (model, "
          "data, videos and subtitle folders, frames, protocol, ...) must stay the same while answered "
          "predictions are kept. Exit status: 0; 2 with one 'error:' line for a mistake in the input, and for a "
          f"run in which more than {FAILING_SHARE:.0%} of the items errored (its summary and predictions are "
          "written, and the line names the most common error).")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="model dir / hub id, a TPO HF export, or a tpo .ckpt; with --backend openai: the "
                             "served model's name")
    parser.add_argument("--backend", choices=["local", "openai"], default="local",
                        help="local: load the model here (default); openai: ask the model served at --base-url "
                             "(e.g. vLLM), sent each question's frames as one video")
    parser.add_argument("--base-url", help="--backend openai: the server's URL, e.g. http://localhost:8000/v1 "
                                           "(API key from $OPENAI_API_KEY, if it needs one)")
    parser.add_argument("--concurrency", type=int, default=8, help="--backend openai: requests in flight")
    parser.add_argument("--thinking", action="store_true",
                        help="--backend openai: the chat template's reasoning mode, as the model was trained "
                             "(model.thinking; with --backend local the trained setting is read from the model)")
    parser.add_argument("--family", help="adapter family (default: from the checkpoint); with --backend openai, "
                                         "whose lmms-eval frame positions to use (one of %s; default: LLaVA's)"
                                         % ", ".join(FRAME_RULES))
    parser.add_argument("--out", required=True,
                        help="folder for predictions.jsonl and summary.json; a rerun into it resumes (see below)")
    parser.add_argument("--num-frames", type=int, default=NUM_FRAMES)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int,
                        help="default: the protocol's (lmms-eval: 16 for Video-MME and MLVU, 32 for LongVideoBench; "
                             "tpo: 16)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-instruction", action=argparse.BooleanOptionalAction, default=None,
                        help="LLaVA-Video's sentence on the frames' times before each question "
                             "(default: as the checkpoint was trained, else off)")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="lmms-eval (default for videomme, longvideobench, mlvu): lmms-eval %s's prompts, frame "
                             "positions, subtitle lines and reading of replies; tpo (ours; the only one for jsonl and "
                             "NIAH): see the README" % LMMS_EVAL_VERSION)
    parser.add_argument("--prompt-variant", choices=VARIANTS,
                        help="lmms-eval: the task's prompt for that lmms-eval model name (default: qwen3_vl for "
                             "Qwen3-VL, else default; llava_vid is what LLaVA-Video's published numbers used)")
    parser.add_argument("--reading", choices=PROTOCOLS,
                        help="read replies the lmms-eval or the tpo way (default: the protocol's); both readings are "
                             "recorded and the summary counts where they differ")
    parser.add_argument("--guess-seed", type=int, default=0,
                        help="lmms-eval LongVideoBench: seed of the random option given to a reply it cannot read")
    parser.add_argument("--scoring", choices=["generate", "likelihood"], default="generate",
                        help="generate a reply and read its letter (default), or pick the option whose "
                             "'<letter>. <text>' has the highest summed log-likelihood (one forward per question)")


def _setting(benchmark: str, subtitles: str | None) -> str:
    """Video-MME's two columns: with and without subtitles."""
    return (" (w/ subs)" if subtitles else " (w/o subs)") if benchmark == "videomme" else ""


def _answerer(args, device: str):
    if args.backend == "openai":
        from tpo.evaluate.served import ServedAnswerer

        return ServedAnswerer(args.base_url, args.model, args.max_new_tokens, args.time_instruction,
                              args.concurrency, family=args.family, thinking=args.thinking)
    import torch

    from tpo.evaluate.model import load_for_eval, make_answerer

    adapter, model, processor = load_for_eval(args.model, args.family, getattr(torch, args.dtype), device,
                                              args.time_instruction)
    return make_answerer(args.scoring, adapter, model, processor, args.max_new_tokens)


def _same_settings(out: Path, settings: dict, answered: int, write: bool) -> None:
    """Refuse to resume into answered predictions made with other settings (they would be mixed
    silently). Errored predictions are all asked again, so new settings may replace theirs."""
    path = out / "settings.json"
    if path.exists() and answered:
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            written = [p.name for p in (out / "predictions.jsonl", *out.glob("predictions.rank*.jsonl"))
                       if p.exists()]
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise TPOError(f"{out} holds {answered} answered prediction(s) made with other settings ({diff}); "
                           f"use another --out, or delete {', '.join(written)} to start over")
    if write:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def _family(args) -> str | None:
    """The model's family, known before it is loaded (the protocol's frames and prompt variant depend on it)."""
    if args.family or args.backend == "openai":
        return args.family
    from tpo.evaluate.model import checkpoint_family

    return checkpoint_family(args.model)


def _protocol(args, benchmark: str) -> Protocol:
    name = args.protocol or ("tpo" if benchmark == "jsonl" else "lmms-eval")
    family = _family(args) if name == "lmms-eval" else args.family
    variant = args.prompt_variant or ("qwen3_vl" if family == "qwen3_vl" else "default")
    protocol = Protocol(name, benchmark, family, variant, args.reading, args.guess_seed)
    if args.max_new_tokens is None:
        args.max_new_tokens = protocol.max_new_tokens
    return protocol


def _prefetch(args, device: str) -> int:
    """Decode the next batch while the model answers when the model does not run on these CPU cores
    (a GPU, or a server); on CPU it only competes for them (benchmarks/eval_prefetch.py: 0.83-0.86x)."""
    from tpo.models.generate import resolve_device

    return 1 if args.backend == "openai" or resolve_device(device).type != "cpu" else 0


def _check_backend(args) -> None:
    if args.backend == "openai" and not args.base_url:
        raise TPOError("--backend openai needs --base-url (the server, e.g. http://localhost:8000/v1)")
    if args.backend == "openai" and args.scoring == "likelihood":
        raise TPOError("--scoring likelihood needs the model's weights: use --backend local")


def _input_settings(benchmark: str, data: str, videos: str | None, subtitles: str | None) -> dict:
    """What the model is shown: the annotations, and the folders of videos and subtitles as absolute
    paths (a resume from another working directory names the same folders)."""
    from tpo.evaluate.benchmarks import video_folder

    recorded = {"data": str(data), "videos": str(video_folder(data, videos).resolve())}
    if benchmark == "videomme":
        recorded.update(subtitles=subtitles is not None,
                        subtitle_folder=str(Path(subtitles).resolve()) if subtitles else None)
    return recorded


def _check_errors(summary: dict, rows: list[dict], items: list) -> None:
    """Fail a run in which more than ``FAILING_SHARE`` of the items errored, naming the most common error."""
    from tpo.evaluate.mcq import most_common_error

    if summary["errors"] > FAILING_SHARE * summary["items"]:
        example, count = most_common_error(rows, items)
        raise TPOError(f"{summary['errors']} of {summary['items']} items errored; the most common error "
                       f"({count} of them): {example}. Fix it and rerun into the same --out: errored items are "
                       "retried")


def _evaluate(args, benchmark: str, data: str, videos: str | None, subtitles: str | None = None,
              niah: bool = False) -> tuple[dict, Path] | None:
    """Answer the benchmark (this process's share of it, under torchrun or srun); on rank 0, merge
    every rank's predictions and return ``(summary, predictions file)`` (other ranks: ``None``)."""
    from tpo.evaluate import ranks as launch
    from tpo.evaluate.benchmarks import load_benchmark
    from tpo.evaluate.mcq import evaluate, format_table, is_answered, read_predictions, summarize
    from tpo.evaluate.model import trained_time_instruction
    from tpo.evaluate.niah import niah_table

    _check_backend(args)
    ranks = launch.from_launcher()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_benchmark(benchmark, data, videos, subtitles)
    if ranks.is_main:
        (out / "bad_items.jsonl").write_text("".join(json.dumps(vars(b)) + "\n" for b in loaded.bad))
    if loaded.bad and ranks.is_main:
        print(f"{len(loaded.bad)} malformed item(s) left out (see {out / 'bad_items.jsonl'}); first: {loaded.bad[0]}")
    if args.time_instruction is None:  # resolved here, so the recorded settings say what was used
        args.time_instruction = args.backend == "local" and trained_time_instruction(args.model)
    protocol = _protocol(args, benchmark)
    settings = {"benchmark": benchmark, **_input_settings(benchmark, data, videos, subtitles),
                "model": args.model, "backend": args.backend,
                **({"base_url": args.base_url} if args.backend == "openai" else {}), "num_frames": args.num_frames,
                "scoring": args.scoring, "time_instruction": args.time_instruction, "dtype": args.dtype,
                "max_new_tokens": args.max_new_tokens if args.scoring == "generate" else None,
                **protocol.settings()}
    done = {item_id for item_id, row in launch.all_done(out).items() if is_answered(row)}
    _same_settings(out, settings, len(done), write=ranks.is_main)
    items = loaded.items[: args.limit] if args.limit else loaded.items
    mine = [i for i in ranks.share(items) if i.id not in done]
    device = launch.start(ranks, args.device)
    try:
        # nothing left to answer (on this rank): no model needed
        evaluate(mine, _answerer(args, device) if mine else None, args.num_frames, args.batch_size,
                 launch.rank_file(out, ranks), progress=ranks.is_main, protocol=protocol,
                 prefetch=_prefetch(args, device))
        launch.wait_for_all(ranks)
    finally:
        launch.finish(ranks)
    if not ranks.is_main:
        return None
    predictions = launch.merge(out, [i.id for i in items])
    merged = read_predictions(predictions)
    rows = [merged[i.id] for i in items if i.id in merged]
    summary = summarize(rows)
    summary.update({**settings, "malformed_items": len(loaded.bad), "processes": ranks.world,
                    "video_backend": backend_name()})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    name = "NIAH" if niah else f"{benchmark}{_setting(benchmark, subtitles)}"
    title = f"{name} — {args.model} ({args.scoring}, protocol {protocol.name})"
    print(niah_table(rows, summary, title) if niah else format_table(summary, title))
    print(f"predictions: {predictions}\nsummary:     {out / 'summary.json'}")
    _check_errors(summary, rows, items)
    return summary, predictions


def _mcq(args) -> None:
    _evaluate(args, args.benchmark, args.data, args.videos, args.subtitles)


def _niah_make(args) -> None:
    from tpo.evaluate.niah import make_niah

    path = make_niah(args.out, args.lengths, args.depths, args.per_cell, args.seed, args.size)
    print(f"wrote {sum(1 for _ in path.open())} NIAH items to {path}")


def _niah(args) -> None:
    from tpo.evaluate.mcq import read_predictions
    from tpo.evaluate.niah import niah_grid, plot_heatmap

    data = Path(args.data)
    result = _evaluate(args, "jsonl", str(data / "niah.jsonl" if data.is_dir() else data), None, niah=True)
    if result is None:  # not rank 0
        return
    _, predictions = result
    grid = niah_grid(list(read_predictions(predictions).values()))
    (Path(args.out) / "niah_grid.json").write_text(json.dumps(grid, indent=2) + "\n")
    print(f"heatmap:     {plot_heatmap(grid, Path(args.out) / 'niah_heatmap.png', f'NIAH — {args.model}')}")


def _table(args) -> None:
    from tpo.evaluate.table import make_table

    text, written = make_table(args.runs, args.names, args.out)
    print(text, end="")
    for path in written:
        print(f"wrote {path}")


def main(argv: list[str] | None = None, prog: str = "python -m tpo.evaluate") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    mcq = commands.add_parser("mcq", help="multiple-choice accuracy on a benchmark", epilog=RERUNS)
    mcq.add_argument("--benchmark", required=True, choices=["videomme", "longvideobench", "mlvu", "jsonl"])
    mcq.add_argument("--data", required=True, help="annotation file (MLVU: the json/ folder)")
    mcq.add_argument("--videos", help="video folder (default: beside --data)")
    mcq.add_argument("--subtitles", metavar="DIR",
                     help="videomme only: the authors' subtitle/ folder of <videoID>.srt; the lines at the shown "
                          "frames' times go before each question ('w/ subs'; default: no subtitles)")
    _model_args(mcq)
    mcq.set_defaults(fn=_mcq)

    make = commands.add_parser("niah-make", help="write needle-in-a-haystack videos and questions")
    make.add_argument("--out", required=True, help="folder for videos/ and niah.jsonl")
    make.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32], help="haystack lengths in frames")
    make.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                      help="where the needle frame is, from 0 (the first frame) to 1 (the last)")
    make.add_argument("--per-cell", type=int, default=2,
                      help="haystacks (each with its own needle and question) per length and depth")
    make.add_argument("--seed", type=int, default=0, help="seed of the haystacks, needles and questions")
    make.add_argument("--size", type=int, default=96, help="frame size in pixels")
    make.set_defaults(fn=_niah_make)

    niah = commands.add_parser("niah", help="NIAH accuracy grid and heatmap", epilog=RERUNS)
    niah.add_argument("--data", required=True, help="folder written by niah-make (or its niah.jsonl)")
    _model_args(niah)
    niah.set_defaults(fn=_niah)

    from tpo.evaluate.table import __doc__ as table_doc

    table = commands.add_parser(
        "table", help="the paper's Table 2 from several evaluated models' summary.json",
        description=table_doc.split("\n\n", 1)[1].replace("``", "'").replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    table.add_argument("runs", nargs="+", metavar="RUN",
                       help="one row each: a `tpo evaluate mcq --out` folder, or a folder of one per benchmark")
    table.add_argument("--out", help="folder for table.md, table.csv and table.png (default: print the table only)")
    table.add_argument("--names",
                       help="the rows' names, comma-separated, one per RUN (default: the RUN folders' names)")
    table.set_defaults(fn=_table)

    args = parser.parse_args(argv)
    return status_of(lambda: args.fn(args))


if __name__ == "__main__":
    run_and_exit(main)
