"""Stage 4: a caption for every frame of every ``S_a``, by an image LMM.

Backends: ``openai`` (any OpenAI-compatible vision chat endpoint; frames sent as JPEG data
URLs) and ``transformers`` (a local image-text model, batched ``generate``). A frame shared by
several segments of a video is captioned once.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_gen.cache import Outcome
from data_gen.client import CallStats, ChatClient, parse_text, user_message
from data_gen.config import ApiConfig, CaptionConfig, fingerprint, prompt_template
from data_gen.decode import FRAMES
from data_gen.index import Video
from data_gen.items import Segment, frame_id
from data_gen.runner import Job, StageRunner
from tpo.data.frames import VideoReadError
from tpo.models.served import image_data_url


@dataclass(frozen=True)
class FrameRequest:
    """One frame to caption: frame ``frame`` of ``video``, which was sampled at ``sampled``."""

    video: Video
    sampled: tuple[int, ...]
    frame: int

    def image(self):
        return FRAMES.get(self.video.path, self.sampled, (self.frame,))[0]


def _settings(cfg: CaptionConfig) -> dict:
    """What changes a caption (not batch size or device)."""
    return {"backend": cfg.backend, "model": cfg.model, "prompt": prompt_template(cfg.prompt),
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "image_size": cfg.image_size,
            "jpeg_quality": cfg.jpeg_quality}


def caption_jobs(segments: list[Segment], videos: dict[str, Video], cfg: CaptionConfig) -> list[Job]:
    settings = _settings(cfg)
    sampled = {seg.video: seg.frame_indices for seg in segments}
    frames = sorted({(seg.video, f) for seg in segments for f in seg.chosen_frames})
    return [Job(frame_id(v, f), fingerprint("caption", settings, videos[v].identity, f),
                FrameRequest(videos[v], sampled[v], f)) for v, f in frames]


class ApiCaptioner:
    def __init__(self, cfg: CaptionConfig, api: ApiConfig, stats: CallStats):
        self.cfg = cfg
        self.prompt = prompt_template(cfg.prompt)
        self.client = ChatClient(api, cfg.base_url, cfg.model, stats, "caption")

    def __call__(self, request: FrameRequest) -> Outcome:
        try:
            image = request.image()
        except VideoReadError as err:
            return Outcome(False, reason=str(err))
        url = image_data_url(image, self.cfg.image_size, self.cfg.jpeg_quality)
        return self.client.ask(user_message(self.prompt, [url]), parse_text,
                               max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature)


class LocalCaptioner:
    """A local ``transformers`` image-text model (``AutoModelForImageTextToText``)."""

    def __init__(self, cfg: CaptionConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from tpo.models.generate import for_inference
        from tpo.builtin import resolve

        path = str(resolve(cfg.model))
        self.cfg = cfg
        self.prompt = prompt_template(cfg.prompt)
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, cfg.dtype))
        self.model = for_inference(model, cfg.device)

    def run_batch(self, jobs: list[Job]) -> list[Outcome]:
        from PIL import Image

        from tpo.models.generate import generate_texts

        images, outcomes = [], [None] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                images.append((i, Image.fromarray(job.payload.image())))
            except VideoReadError as err:
                outcomes[i] = Outcome(False, reason=str(err))
        if images:
            message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text] * len(images), images=[im for _, im in images],
                                    return_tensors="pt", padding=True)
            texts = generate_texts(self.model, self.processor, dict(inputs), self.cfg.max_tokens,
                                   self.cfg.temperature, seed=0)
            for (i, _), caption in zip(images, texts):
                outcomes[i] = Outcome(True, caption.text) if caption.text else Outcome(False, reason="empty caption")
        return outcomes


def run_captions(jobs: list[Job], cfg: CaptionConfig, api: ApiConfig, stats: CallStats,
                 runner: StageRunner) -> None:
    """Caption every job's frame; the model is loaded (or the client made) only if something is missing."""
    if cfg.backend == "transformers":
        runner.run_batched(jobs, cfg.batch_size, lambda: LocalCaptioner(cfg).run_batch)
    else:
        runner.run_calls(jobs, lambda: ApiCaptioner(cfg, api, stats), api.max_concurrency)
