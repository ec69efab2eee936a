"""``tpo data run|merge|import`` (or ``python -m data_gen ...``): see ``tpo data <command> --help``."""

from __future__ import annotations

import argparse
import json
import sys

from data_gen.config import load_config
from tpo.clean_exit import run_and_exit
from tpo.data.frames import NUM_FRAMES
from tpo.errors import TPOError, status_of


_RUN_FLAGS = ("--config", "--num-shards", "--shard-index", "--dry-run", "--no-progress", "--help")


def settings_as_dotlist(argv: list[str]) -> list[str]:
    """``run``'s ``--answer.model x`` and ``--answer.model=x`` (the grammar of ``tpo fit``) as OmegaConf's
    ``answer.model=x``; ``run``'s own flags and ``key=value`` settings pass through."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or arg.split("=")[0] in _RUN_FLAGS or not key:
            out.append(arg)
        elif sep:
            out.append(f"{key}={value}")
        elif rest and not rest[0].startswith("--"):
            out.append(f"{key}={rest.pop(0)}")
        else:
            raise TPOError(f"--{key} needs a value (settings are --key value or key=value)")
    return out


def _run(args) -> None:
    from data_gen.pipeline import Pipeline

    cfg = load_config(args.config, args.overrides)
    pipeline = Pipeline(cfg, args.num_shards, args.shard_index, progress=not args.no_progress)
    if args.dry_run:
        print(json.dumps(pipeline.dry_run(), indent=2))
        return
    manifest = pipeline.run()
    counts, run = manifest["counts"], manifest["run"]
    print(f"data_gen done in {run['seconds']:.1f}s -> {pipeline.out}")
    print(f"  videos:   {counts['videos']['usable']} usable of {counts['videos']['found']} "
          f"(skipped: {counts['videos']['skipped_by_reason'] or 0})")
    print(f"  pairs:    {counts['pairs']['candidates']} answered, {counts['pairs']['identical_answers']} identical, "
          f"{counts['pairs']['with_truncated_answer']} with a cut answer ({counts['pairs']['dropped_truncated']} "
          f"dropped, answer.truncated={cfg.answer.truncated}), "
          f"{counts['pairs']['kept']} kept; dropped by rule: {counts['pairs']['dropped_by_rule'] or 0}")
    print(f"  records:  {counts['records']['written']} {counts['records']['by_manipulation']}")
    if cfg.sft_llm.enabled:
        sft = counts["sft_llm"]
        print(f"  SFT_LLM:  {sft['written']} records in preferences_sft_llm.jsonl ({sft['asked']} asked, "
              f"{sft['failed']} failed)")
    print(f"  calls:    {run['calls']}")
    print(f"  items:    {run['items']}")
    failures = sum(v.get("transient_failures", 0) for v in run["items"].values())
    if failures:
        print(f"  {failures} item(s) failed on transient errors; rerun the same command to retry them")


def _merge(args) -> None:
    from data_gen.merge import merge_shards

    stats = merge_shards(args.output_dir)
    print(f"merged {stats['records']['written']} records into {args.output_dir}")


def _import(args) -> None:
    official = args.format == "tpo-official"
    given = [flag for flag, value, wanted in (("--num-frames", args.num_frames, False),
                                              ("--video-fps", args.video_fps, True),
                                              ("--frames-upbound", args.frames_upbound, True),
                                              ("--columns", args.columns, True))
             if value is not None and wanted != official]
    if given:
        raise TPOError("--format tpo-official samples frames by the authors' rule (--video-fps, --frames-upbound), "
                       "not --num-frames" if official else
                       f"{', '.join(given)}: only for --format tpo-official, not {args.format}")
    if not official:
        from data_gen.importers import import_file

        written, skipped = import_file(args.format, args.input, args.videos, args.output,
                                       NUM_FRAMES if args.num_frames is None else args.num_frames)
        print(f"imported {written} records into {args.output} ({skipped} skipped, see skipped.jsonl)")
        return
    from data_gen.import_tpo_official import FRAMES_UPBOUND, VIDEO_FPS, import_tpo_official

    stats = import_tpo_official(args.input, args.videos, args.output,
                                VIDEO_FPS if args.video_fps is None else args.video_fps,
                                FRAMES_UPBOUND if args.frames_upbound is None else args.frames_upbound, args.columns)
    kinds = ", ".join(f"{kind} {n}" for kind, n in stats["skipped_by_kind"].items())
    print(f"imported {stats['records']['written']} of {stats['lines']} rows into {args.output} "
          f"({stats['skipped']} skipped{': ' + kinds if kinds else ''}; see skipped.jsonl)")


def main(argv: list[str] | None = None, prog: str = "python -m data_gen") -> int:
    """``tpo data ...`` (registered as a ``tpo.commands`` entry point) and ``python -m data_gen ...``."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="videos folder -> preference dataset directory")
    run.add_argument("--config", help="YAML config (see data_gen/configs/)")
    run.add_argument("overrides", nargs="*", help="settings as key=value or --key value, e.g. answer.batch_size=4 "
                                                   "or --answer.batch_size 4")
    run.add_argument("--num-shards", type=int, default=1)
    run.add_argument("--shard-index", type=int, default=0)
    run.add_argument("--dry-run", action="store_true", help="print how many model calls each stage will make")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(fn=_run)

    merge = commands.add_parser("merge", help="join the shard-*-of-* outputs inside OUTPUT_DIR")
    merge.add_argument("output_dir")
    merge.set_defaults(fn=_merge)

    imp = commands.add_parser("import", help="convert a public preference format into our records")
    imp.add_argument("--format", required=True, choices=["llava-hound", "trl", "tpo-official"],
                     help="tpo-official: the TPO authors' release (ruili0/LongVA-TPO-10k), see "
                          "docs/import-authors-data.md")
    imp.add_argument("--input", required=True, help="JSON or JSONL file (tpo-official: also CSV)")
    imp.add_argument("--videos", required=True, help="folder the file's video paths are relative to")
    imp.add_argument("--output", required=True, help="dataset directory to write")
    imp.add_argument("--num-frames", type=int, default=None,
                     help=f"uniform frames per record (llava-hound, trl; default {NUM_FRAMES})")
    imp.add_argument("--video-fps", type=float, default=None,
                     help="tpo-official: the authors' video_fps, every round(fps / video_fps)-th frame (default 1)")
    imp.add_argument("--frames-upbound", type=int, default=None,
                     help="tpo-official: the authors' frames_upbound, np.linspace over the video when the stride "
                          "gives more frames (default 32, the paper's; 0: no bound)")
    imp.add_argument("--columns", default=None, metavar="KEY=COLUMN,...",
                     help="tpo-official: the file's names for the loader's keys prompt, answer, chosen, rejected, "
                          "video (and id), e.g. chosen=preferred,rejected=dispreferred")
    imp.set_defaults(fn=_import)

    def parse_and_run():
        given = sys.argv[1:] if argv is None else list(argv)
        args = parser.parse_args(settings_as_dotlist(given) if given[:1] == ["run"] else given)
        args.fn(args)

    return status_of(parse_and_run)


if __name__ == "__main__":
    run_and_exit(main)
