"""The whole pipeline: index → sample → manipulate → caption → questions → answer → post-filter → SFT_LLM
answers → write.

Each stage is a module of its own; this file only passes items from one to the next, keeps
the counts and writes the dataset directory. Every model call goes through the result cache
(``cache.sqlite`` in the output directory), so rerunning after a crash resumes.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_gen.answer import answer_jobs, run_answers
from data_gen.cache import ResultCache
from data_gen.caption import caption_jobs, run_captions
from data_gen.client import CallStats
from data_gen.config import to_dict
from data_gen.index import index_videos, list_videos, shard
from data_gen.items import SIDES, Pair, Question, Segment, answer_id, frame_id, question_id
from data_gen.manipulate import make_segments
from data_gen.postfilter import filter_jobs, rule_labels, run_postfilter
from data_gen.questions import format_captions, question_jobs, run_questions
from data_gen.runner import StageRunner
from data_gen.sample import sample_frames
from data_gen.sft_llm import run_sft_llm, sft_jobs
from data_gen.write import (build_record, build_sft_record, category, count_by, package_versions, write_json,
                            write_jsonl)
from tpo.data.decoders import backend_name
from tpo.data.records import SCHEMA_VERSION


@dataclass(frozen=True)
class Results:
    """What the stages made, for the records and the counts."""

    usable: dict  # relative path -> Video
    segments: list[Segment]
    questions: list[Question]
    answers: dict  # answer id -> {text, truncated}
    pairs: list[Pair]  # every question with both answers
    early: dict  # pair id -> (rule, reason) of the pairs dropped before the post-filter (precheck)
    verdicts: dict  # pair id -> the post-filter's verdict
    sft_answers: dict  # pair id -> the LLM's answer {text, truncated} (SFT_LLM), for every pair asked


def precheck(pair: Pair, truncated: str) -> tuple[str, str] | None:
    """``(rule, reason)`` when a pair is dropped before the post-filter, else ``None``."""
    if pair.chosen == pair.rejected:
        return "identical", "chosen and rejected answers are identical"
    cut = [side for side, was_cut in zip(SIDES, (pair.chosen_truncated, pair.rejected_truncated)) if was_cut]
    if cut and truncated == "drop":
        return "truncated", f"the {' and '.join(cut)} answer stopped at answer.max_new_tokens"
    return None


def shard_dir(output_dir: str | Path, num_shards: int, shard_index: int) -> Path:
    """Where one shard writes: the output directory itself, or ``shard-<i>-of-<n>`` inside it."""
    out = Path(output_dir)
    return out if num_shards == 1 else out / f"shard-{shard_index:03d}-of-{num_shards:03d}"


class Pipeline:
    def __init__(self, cfg, num_shards: int = 1, shard_index: int = 0, progress: bool = True):
        self.cfg, self.num_shards, self.shard_index, self.progress = cfg, num_shards, shard_index, progress
        self.out = shard_dir(cfg.output_dir, num_shards, shard_index)
        self.stats = CallStats()
        self.runners: dict[str, StageRunner] = {}
        self.seconds: dict[str, float] = {}
        self.skipped: list[dict] = []
        self.failures: list[dict] = []

    # ---- plumbing -------------------------------------------------------------------------------
    def _runner(self, stage: str) -> StageRunner:
        self.runners[stage] = StageRunner(self.cache, stage, self.progress)
        return self.runners[stage]

    def _fail(self, stage: str, item: str, reason: str, transient: bool = False) -> None:
        self.failures.append({"id": item, "stage": stage, "reason": reason, "transient": transient})

    def _collect(self, stage: str, jobs) -> dict:
        """Ok values by item id; failures (cached or transient) recorded."""
        runner = self.runners[stage]
        values = {}
        for job in jobs:
            if job.id in runner.transient:
                self._fail(stage, job.id, runner.transient[job.id], transient=True)
            elif not runner.outcomes[job.id].ok:
                self._fail(stage, job.id, runner.outcomes[job.id].reason)
            else:
                values[job.id] = runner.outcomes[job.id].value
        return values

    def _timed(self, stage: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        return result

    # ---- stages ---------------------------------------------------------------------------------
    def segments(self):
        """Stages 1-3: the usable videos and their (S_a, S_b) segments."""
        cfg = self.cfg
        rels = shard(list_videos(cfg.videos), self.num_shards, self.shard_index)
        self.found = len(rels)
        videos, self.skipped = self._timed("index", index_videos, cfg.videos, rels, self._runner("index"))
        usable, segments = {}, []
        for video in videos:
            try:
                frames = sample_frames(video, cfg.num_frames)
            except ValueError as err:
                self.skipped.append({"video": video.rel, "stage": "sample", "reason": str(err)})
                continue
            usable[video.rel] = video
            segments += make_segments(video.rel, frames, cfg.manipulation, cfg.seed)
        return usable, segments

    def dry_run(self) -> dict:
        """How many model calls each stage will make (exact for captions, upper bounds after)."""
        self.cache = ResultCache(self.out / "cache.sqlite")
        usable, segments = self.segments()
        jobs = caption_jobs(segments, usable, self.cfg.caption)
        q = self.cfg.questions.per_segment
        plan = {
            "videos": {"found": self.found, "usable": len(usable), "skipped": len(self.skipped)},
            "caption": {"frames": len(jobs), "calls_to_make": self._runner("caption").missing(jobs)},
            "questions": {"calls_at_most": len(segments)},
            "answer": {"generations_at_most": 2 * q * len(segments)},
            "postfilter": {"calls_at_most": q * len(segments) if self.cfg.postfilter.enabled else 0},
            "sft_llm": {"calls_at_most": q * len(segments) if self.cfg.sft_llm.enabled else 0},
        }
        self.cache.close()
        return plan

    def run(self) -> dict:
        cfg = self.cfg
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = ResultCache(self.out / "cache.sqlite")
        try:
            usable, segments = self.segments()
            captions = self._captions(segments, usable)
            questions = self._questions(segments, captions, usable)
            answers = self._answers(questions, usable)
            pairs = self._pairs(questions, answers, captions, usable)
            early = {p.id: drop for p in pairs if (drop := precheck(p, cfg.answer.truncated)) is not None}
            candidates = [p for p in pairs if p.id not in early]
            jobs = filter_jobs(candidates, cfg.postfilter)
            self._timed("postfilter", run_postfilter, jobs, cfg.postfilter, cfg.api, self.stats,
                        self._runner("postfilter"))
            verdicts = self._collect("postfilter", jobs)
            sft = sft_jobs(pairs, cfg.sft_llm)  # every pair: see data_gen.sft_llm
            self._timed("sft_llm", run_sft_llm, sft, cfg.sft_llm, cfg.api, self.stats, self._runner("sft_llm"))
            sft_answers = self._collect("sft_llm", sft)
            results = Results(usable, segments, questions, answers, pairs, early, verdicts, sft_answers)
            return self._write(results, time.perf_counter() - start)
        finally:
            self.cache.close()

    def _captions(self, segments: list[Segment], usable: dict) -> dict[str, list[dict]]:
        """The ``S_a`` captions of each segment whose frames were all captioned, by segment id."""
        jobs = caption_jobs(segments, usable, self.cfg.caption)
        self._timed("caption", run_captions, jobs, self.cfg.caption, self.cfg.api, self.stats, self._runner("caption"))
        frame_captions = self._collect("caption", jobs)
        captions = {}
        for seg in segments:
            missing = [f for f in seg.chosen_frames if frame_id(seg.video, f) not in frame_captions]
            if missing:
                self._fail("questions", seg.id, f"no caption for frame {missing[0]} (see the caption failure)")
            else:
                captions[seg.id] = [{"frame": f, "text": frame_captions[frame_id(seg.video, f)]}
                                    for f in seg.chosen_frames]
        return captions

    def _questions(self, segments: list[Segment], captions: dict, usable: dict) -> list[Question]:
        cfg = self.cfg
        fps = {rel: v.fps for rel, v in usable.items()}
        jobs = question_jobs(segments, captions, fps, cfg.questions)
        self._timed("questions", run_questions, jobs, cfg.questions, cfg.api, self.stats, self._runner("questions"))
        asked = self._collect("questions", jobs)
        self.questions_dropped = [d for reply in asked.values() for d in reply["dropped"]]
        return [Question(question_id(seg.id, j), seg, q["type"], q["question"])
                for seg in segments if seg.id in asked for j, q in enumerate(asked[seg.id]["questions"])]

    def _answers(self, questions: list[Question], usable: dict) -> dict[str, dict]:
        cfg = self.cfg
        jobs = answer_jobs(questions, usable, cfg.answer)
        self._timed("answer", run_answers, jobs, cfg.answer, cfg.api, self.stats, self._runner("answer"))
        return self._collect("answer", jobs)

    @staticmethod
    def _pairs(questions: list[Question], answers: dict, captions: dict, usable: dict) -> list[Pair]:
        """Every question both of whose answers were made."""
        pairs = []
        for q in questions:
            chosen, rejected = answers.get(answer_id(q.id, "chosen")), answers.get(answer_id(q.id, "rejected"))
            if chosen is not None and rejected is not None:
                seg_captions = captions[q.segment.id]
                pairs.append(Pair(q, chosen["text"], rejected["text"], chosen["truncated"], rejected["truncated"],
                                  tuple(seg_captions), format_captions(seg_captions, usable[q.segment.video].fps)))
        return pairs

    # ---- output ---------------------------------------------------------------------------------
    def _provenance(self) -> dict:
        cfg = self.cfg
        return {"generator": "data_gen", "policy": cfg.answer.model, "family": cfg.answer.family,
                "llm": cfg.questions.model, "captioner": cfg.caption.model,
                "judge": cfg.postfilter.model if cfg.postfilter.enabled else None, "seed": cfg.seed}

    def _records(self, results: Results) -> tuple[list[dict], list[dict]]:
        """``(kept, dropped)`` records: pairs dropped before the post-filter, then its verdicts."""
        provenance = self._provenance()
        judge = provenance["judge"] or "none"
        kept, dropped = [], []
        for pair in results.pairs:
            if pair.id in results.early:
                rule, reason = results.early[pair.id]
                verdict = {"kept": False, "rule": rule, "reason": reason, "judge": "data_gen"}
                dropped.append(build_record(pair, verdict, provenance))
            elif pair.id in results.verdicts:
                record = build_record(pair, {**results.verdicts[pair.id], "judge": judge}, provenance)
                (kept if record["filter"]["kept"] else dropped).append(record)
        return kept, dropped

    def _sft_records(self, results: Results, kept: list[dict]) -> list[dict]:
        """The SFT_LLM file: each kept record whose question the LLM answered, with that answer as ``chosen``."""
        return [build_sft_record(r, results.sft_answers[r["id"]], self.cfg.sft_llm.model)
                for r in kept if r["id"] in results.sft_answers]

    def _stats(self, results: Results, kept: list[dict], dropped: list[dict], sft: list[dict]) -> dict:
        rules = rule_labels(self.cfg.postfilter.rule1)
        early = [rule for rule, _ in results.early.values()]
        by_rule = count_by([r for r in dropped if r["filter"]["rule"] in rules],
                           lambda r: f"{r['filter']['rule']}: {rules[r['filter']['rule']]}")
        failed = Counter(f["stage"] for f in self.failures)
        return {
            "videos": {"found": self.found, "usable": len(results.usable), "skipped": len(self.skipped),
                       "skipped_by_reason": count_by(self.skipped, lambda s: category(s["reason"]))},
            "segments": count_by(results.segments, lambda s: s.kind),
            "captions": {"frames": len(self.runners["caption"].outcomes) + len(self.runners["caption"].transient),
                         "failed": failed["caption"]},
            "questions": {"segments_asked": len(self.runners["questions"].outcomes),
                          "segments_failed": failed["questions"], "written": len(results.questions),
                          "by_type": count_by(results.questions, lambda q: q.type),
                          "dropped_by_reason": count_by(self.questions_dropped, lambda d: d["reason"])},
            "answers": {"ok": len(results.answers), "failed": failed["answer"]},
            "pairs": {"candidates": len(results.pairs), "identical_answers": early.count("identical"),
                      "with_truncated_answer": sum(p.any_truncated for p in results.pairs),
                      "dropped_truncated": early.count("truncated"), "judged": len(results.verdicts),
                      "kept": len(kept), "dropped_by_rule": by_rule},
            "records": {"written": len(kept), "by_manipulation": count_by(kept, lambda r: r["manipulation"]),
                        "by_question_type": count_by(kept, lambda r: r["question_type"])},
            # asked: every pair (kept or not); failed: of those; written: kept pairs with an answer
            "sft_llm": {"asked": len(self.runners["sft_llm"].outcomes) + len(self.runners["sft_llm"].transient),
                        "failed": failed["sft_llm"], "written": len(sft)},
        }

    def _token_usage(self) -> dict:
        usage = {}
        for stage, runner in self.runners.items():
            tokens = Counter()
            for outcome in runner.outcomes.values():
                tokens.update(outcome.usage)
            if tokens:
                usage[stage] = dict(tokens)
        return usage

    def _write(self, results: Results, seconds: float) -> dict:
        cfg = self.cfg
        kept, dropped = self._records(results)
        sft = self._sft_records(results, kept)
        write_jsonl(self.out / "preferences.jsonl", kept, "id")
        write_jsonl(self.out / "preferences_sft_llm.jsonl", sft, "id")
        write_jsonl(self.out / "filtered_out.jsonl", dropped, "id")
        write_jsonl(self.out / "skipped.jsonl", self.skipped, "video")
        write_jsonl(self.out / "failures.jsonl", self.failures, "id")
        stats = self._stats(results, kept, dropped, sft)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "video_root": str(Path(cfg.videos).resolve()),
            "config": to_dict(cfg),  # holds the *name* of the key's environment variable, never the key
            "shard": {"index": self.shard_index, "num_shards": self.num_shards},
            "versions": package_versions(),
            "video_backend": backend_name(),  # tpo.data.decoders: decord and PyAV give the same frames
            "counts": stats,
            "token_usage": self._token_usage(),
            "run": {"seconds": round(seconds, 2), "stage_seconds": self.seconds, "calls": self.stats.as_dict(),
                    "items": {stage: r.summary() for stage, r in self.runners.items()}},
        }
        write_json(self.out / "stats.json", stats)
        write_json(self.out / "manifest.json", manifest)
        return manifest
