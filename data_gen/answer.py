"""Stage 6: the video-LMM being trained answers each question on ``S_a`` (r+) and on ``S_b`` (r-).

Backends: ``local`` loads the model through the project's model adapters (the same chat
template and frame processing training uses) and generates in batches; ``openai`` sends the
frames as one video, with their timing, to an OpenAI-compatible server (e.g. vLLM serving the same
model; see :mod:`tpo.models.served`).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_gen.cache import Outcome
from data_gen.client import CallStats, ChatClient, parse_text
from data_gen.config import AnswerConfig, ApiConfig, fingerprint
from data_gen.decode import FRAMES
from data_gen.index import Video
from data_gen.items import SIDES, Question, answer_id
from data_gen.runner import Job, StageRunner
from tpo.data.frames import Clip, VideoInfo, VideoReadError, clip_of
from tpo.models.served import extra_body, video_messages

# In the cache key: 2 since answers are {text, truncated}.
ANSWER_FORMAT = 2


@dataclass(frozen=True)
class AnswerRequest:
    """The policy asked ``question`` about frames ``frames`` (``S_a`` or ``S_b``) of ``video``."""

    video: Video
    sampled: tuple[int, ...]  # the video's sampled frames (decoded together, once)
    frames: tuple[int, ...]
    question: str

    def clip(self) -> Clip:
        """The frames with their real timing, as training will show them."""
        video = self.video
        frames = FRAMES.get(video.path, self.sampled, self.frames)
        return clip_of(frames, VideoInfo(video.num_frames, video.fps), list(self.frames))


def answer_jobs(questions: list[Question], videos: dict[str, Video], cfg: AnswerConfig) -> list[Job]:
    """Two jobs per question (:func:`~data_gen.items.answer_id`: its ``::chosen`` and ``::rejected``)."""
    settings = {k: cfg[k] for k in ("backend", "model", "family", "max_new_tokens", "temperature", "time_instruction",
                                    "thinking")}
    settings["format"] = ANSWER_FORMAT
    if cfg.backend == "openai":
        settings["sent_as"] = "video"  # answers cached when frames went as separate images are not reused
    jobs = []
    for q in questions:
        video = videos[q.segment.video]
        for side, frames in zip(SIDES, (q.segment.chosen_frames, q.segment.rejected_frames)):
            key = fingerprint("answer", settings, video.identity, frames, q.text)
            jobs.append(Job(answer_id(q.id, side), key, AnswerRequest(video, q.segment.frame_indices, frames, q.text)))
    return jobs


def answer_outcome(text: str, truncated: bool) -> Outcome:
    return Outcome(True, {"text": text, "truncated": truncated}) if text else Outcome(False, reason="empty answer")


class LocalAnswerer:
    def __init__(self, cfg: AnswerConfig):
        import torch

        from tpo.models import get_adapter
        from tpo.models.generate import for_inference

        self.cfg = cfg
        self.adapter = get_adapter(cfg.family, cfg.time_instruction, cfg.thinking)
        model, self.processor = self.adapter.load(cfg.model, getattr(torch, cfg.dtype))
        self.model = for_inference(model, cfg.device)

    def run_batch(self, jobs: list[Job]) -> list[Outcome]:
        from tpo.models.generate import answer_questions

        outcomes, ready = [None] * len(jobs), []
        for i, job in enumerate(jobs):
            try:
                ready.append((i, job.payload.clip(), job.payload.question))
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

    def __call__(self, request: AnswerRequest) -> Outcome:
        try:
            clip = request.clip()
        except VideoReadError as err:
            return Outcome(False, reason=str(err))
        body = extra_body(clip, self.cfg.family, {"enable_thinking": self.cfg.thinking})
        return self.client.ask(video_messages(request.question, clip, self.cfg.time_instruction), parse_text,
                               mark_truncated=True, max_tokens=self.cfg.max_new_tokens,
                               temperature=self.cfg.temperature, extra_body=body)


def run_answers(jobs: list[Job], cfg: AnswerConfig, api: ApiConfig, stats: CallStats, runner: StageRunner) -> None:
    if cfg.backend == "local":
        runner.run_batched(jobs, cfg.batch_size, lambda: LocalAnswerer(cfg).run_batch,
                           group=lambda job: len(job.payload.frames))
    else:
        runner.run_calls(jobs, lambda: ApiAnswerer(cfg, api, stats), api.max_concurrency)
