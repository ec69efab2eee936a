"""Stage 6: the video-LMM being trained answers each question on ``S_a`` (r+) and on ``S_b`` (r-).

Backends: ``local`` loads the model through the project's model adapters (the same chat
template and frame processing training uses) and generates in batches; ``openai`` sends the
frames as one video, with their timing, to an OpenAI-compatible server (e.g. vLLM serving the same
model; see :mod:`tpo.models.served`).
"""

from __future__ import annotations

from data_gen.cache import Outcome
from data_gen.client import CallStats, ChatClient, parse_text
from data_gen.config import AnswerConfig, ApiConfig, fingerprint
from data_gen.decode import FRAMES
from data_gen.index import Video
from data_gen.runner import Job, StageRunner
from tpo.data.frames import Clip, VideoInfo, VideoReadError, clip_of
from tpo.models.served import timing, video_messages

SIDES = {"chosen": "chosen_frames", "rejected": "rejected_frames"}


def answer_jobs(questions: list[dict], videos: dict[str, Video], cfg: AnswerConfig) -> list[Job]:
    """Two jobs per question (``<question id>::chosen`` / ``::rejected``)."""
    settings = {k: cfg[k] for k in ("backend", "model", "family", "max_new_tokens", "temperature", "time_instruction")}
    settings["format"] = 2  # answers are {text, truncated}
    if cfg.backend == "openai":
        settings["sent_as"] = "video"  # answers cached when frames went as separate images are not reused
    jobs = []
    for q in questions:
        video = videos[q["segment"].video]
        for side, field in SIDES.items():
            frames = getattr(q["segment"], field)
            key = fingerprint("answer", settings, video.identity, frames, q["question"])
            jobs.append(Job(f"{q['id']}::{side}", key, (video, q["segment"].frame_indices, frames, q["question"])))
    return jobs


def video_clip(video: Video, sampled: tuple[int, ...], frames: tuple[int, ...]) -> Clip:
    """The frames ``frames`` of ``video`` with their real timing, as training will show them."""
    return clip_of(FRAMES.get(video.path, sampled, frames), VideoInfo(video.num_frames, video.fps), list(frames))


def answer_outcome(text: str, truncated: bool) -> Outcome:
    return Outcome(True, {"text": text, "truncated": truncated}) if text else Outcome(False, reason="empty answer")


class LocalAnswerer:
    def __init__(self, cfg: AnswerConfig):
        import torch

        from tpo.models import get_adapter
        from tpo.models.generate import for_inference

        self.cfg = cfg
        self.adapter = get_adapter(cfg.family, cfg.time_instruction)
        model, self.processor = self.adapter.load(cfg.model, getattr(torch, cfg.dtype))
        self.model = for_inference(model, cfg.device)

    def run_batch(self, jobs: list[Job]) -> list[Outcome]:
        from tpo.models.generate import answer_questions

        outcomes, ready = [None] * len(jobs), []
        for i, job in enumerate(jobs):
            video, sampled, frames, question = job.payload
            try:
                ready.append((i, video_clip(video, sampled, frames), question))
            except VideoReadError as err:
                outcomes[i] = Outcome(False, reason=str(err))
        if ready:
            # Seeded by the batch's first key: sampling (temperature > 0) is reproducible on resume.
            answers = answer_questions(self.adapter, self.model, self.processor, [r[1] for r in ready],
                                       [r[2] for r in ready], self.cfg.max_new_tokens, self.cfg.temperature,
                                       seed=int(jobs[0].key[:8], 16))
            for (i, _, _), answer in zip(ready, answers):
                outcomes[i] = answer_outcome(answer.text, answer.truncated)
        return outcomes


class ApiAnswerer:
    def __init__(self, cfg: AnswerConfig, api: ApiConfig, stats: CallStats):
        self.cfg = cfg
        self.client = ChatClient(api, cfg.base_url, cfg.model, stats, "answer")

    def __call__(self, video: Video, sampled: tuple[int, ...], frames: tuple[int, ...], question: str) -> Outcome:
        try:
            clip = video_clip(video, sampled, frames)
        except VideoReadError as err:
            return Outcome(False, reason=str(err))
        return self.client.ask(video_messages(question, clip, self.cfg.time_instruction), parse_text,
                               mark_truncated=True, max_tokens=self.cfg.max_new_tokens,
                               temperature=self.cfg.temperature, extra_body=timing(clip))


def run_answers(jobs: list[Job], cfg: AnswerConfig, api: ApiConfig, stats: CallStats, runner: StageRunner) -> None:
    if cfg.backend == "local":
        runner.run_batched(jobs, cfg.batch_size, lambda: LocalAnswerer(cfg).run_batch,
                           group=lambda job: len(job.payload[2]))
    else:
        runner.run_calls(jobs, lambda: ApiAnswerer(cfg, api, stats), api.max_concurrency)
