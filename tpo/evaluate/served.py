"""``--backend openai``: a model served behind an OpenAI-compatible API (vLLM) answers the benchmark.

Each question is one chat request: the shown frames as one video with their rate
(:mod:`tpo.models.served`), then the prompt; greedy, ``max_new_tokens``. Requests of a batch run
concurrently. A request the server keeps failing stops the run with the server's message; the
predictions written so far stay, and the same command resumes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from tpo.data.frames import Clip
from tpo.errors import TPOError
from tpo.models.served import FrameCheck, extra_body, prompt_tokens_of, video_messages


class ServedAnswerer:
    """``answerer(clips, prompts) -> replies`` from the model ``model`` at ``base_url``."""

    def __init__(self, base_url: str, model: str, max_new_tokens: int = 16, time_instruction: bool = False,
                 concurrency: int = 8, timeout_s: float = 600.0, max_retries: int = 5, family: str | None = None,
                 thinking: bool = False):
        import openai

        self.base_url, self.model, self.max_new_tokens = base_url, model, max_new_tokens
        self.time_instruction, self.concurrency = time_instruction, concurrency
        self.family, self.template = family, {"enable_thinking": thinking}
        # the openai client retries connection errors, 408/409/429 and 5xx with backoff
        self.client = openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    timeout=timeout_s, max_retries=max_retries)
        self.frame_check = FrameCheck(base_url, prompt_tokens_of(self.client, model, family))

    def _ask(self, clip: Clip, prompt: str) -> str:
        import openai

        try:
            self.frame_check(clip)
            response = self.client.chat.completions.create(
                model=self.model, messages=video_messages(prompt, clip, self.time_instruction),
                max_tokens=self.max_new_tokens, temperature=0.0,
                extra_body=extra_body(clip, self.family, self.template))
        except openai.APIStatusError as err:
            raise TPOError(f"{self.base_url} refused a request for model {self.model!r} "
                           f"(HTTP {err.status_code}): {err.message}") from None
        except openai.APIError as err:
            raise TPOError(f"{self.base_url}: {err.message}; the predictions so far are kept, "
                           f"run the same command again to resume") from None
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    def __call__(self, clips: list[Clip], prompts: list[str]) -> list[str]:
        with ThreadPoolExecutor(min(self.concurrency, max(len(prompts), 1))) as pool:
            return list(pool.map(self._ask, clips, prompts))
