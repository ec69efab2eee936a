"""Running one stage's items: cached ones are read back, the rest run concurrently or in batches.

Results are written to the cache by the main thread the moment each one arrives, so a killed
run loses only the calls that were in flight.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable

from tqdm.auto import tqdm

from data_gen.cache import Outcome, ResultCache
from data_gen.client import TransientFailure


@dataclass
class Job:
    """One item of a stage: ``key`` is its cache key, ``payload`` what its call is given (the stage's
    request: a path, a prompt, a :class:`~data_gen.caption.FrameRequest` or an
    :class:`~data_gen.answer.AnswerRequest`)."""

    id: str  # human-readable item id (data_gen.items; failures.jsonl)
    key: str
    payload: object = None


class StageRunner:
    """Runs jobs of one stage against the cache; collects outcomes and per-run counts."""

    def __init__(self, cache: ResultCache, stage: str, progress: bool = True):
        self.cache, self.stage, self.progress = cache, stage, progress
        self.outcomes: dict[str, Outcome] = {}  # item id -> outcome
        self.transient: dict[str, str] = {}  # item id -> reason (not cached; retried next run)
        self.cached = 0
        self.computed = 0

    def missing(self, jobs: Iterable[Job]) -> int:
        """How many jobs have no cached outcome (nothing is recorded)."""
        return sum(self.cache.get(self.stage, job.key) is None for job in jobs)

    def pending(self, jobs: Iterable[Job]) -> list[Job]:
        """Fill outcomes from the cache; return the jobs still to run."""
        todo = []
        for job in jobs:
            hit = self.cache.get(self.stage, job.key)
            if hit is None:
                todo.append(job)
            else:
                self.outcomes[job.id] = hit
                self.cached += 1
        return todo

    def _store(self, job: Job, outcome: Outcome) -> None:
        self.cache.put(self.stage, job.key, outcome)
        self.outcomes[job.id] = outcome
        self.computed += 1

    def run_calls(self, jobs: Iterable[Job], make_call: Callable[[], Callable[..., Outcome]],
                  max_concurrency: int) -> None:
        """Run ``call(job.payload)`` concurrently for the jobs not cached; ``make_call()`` (which
        may build an API client) runs only if there is any."""
        todo = self.pending(jobs)
        if not todo:
            return
        call = make_call()
        bar = tqdm(total=len(todo), desc=self.stage, unit="call", disable=not self.progress or not todo)
        with ThreadPoolExecutor(max_concurrency) as pool:
            running = {}
            queue = iter(todo)
            try:
                while True:
                    while len(running) < 2 * max_concurrency and (job := next(queue, None)) is not None:
                        running[pool.submit(call, job.payload)] = job
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        try:
                            self._store(job, future.result())
                        except TransientFailure as err:
                            self.transient[job.id] = str(err)
                        bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                bar.close()

    def run_batched(self, jobs: list[Job], batch_size: int,
                    make_run_batch: Callable[[], Callable[[list[Job]], list[Outcome]]],
                    group: Callable[[Job], object] = lambda job: None) -> None:
        """Run ``jobs`` in batches of jobs with equal ``group(job)``; ``make_run_batch()`` (which may
        load a model) runs only if some batch is not cached.

        The batches are planned over *all* jobs, cached or not, and a batch runs whole if any of
        its jobs is missing: a resumed run computes every item in the same batch as an
        uninterrupted run would, so batched generation gives the same results.
        """
        by_group: dict = {}
        for job in jobs:
            by_group.setdefault(group(job), []).append(job)
        batches = [g[i:i + batch_size] for g in by_group.values() for i in range(0, len(g), batch_size)]
        todo_batches = []
        for batch in batches:
            hits = [self.cache.get(self.stage, job.key) for job in batch]
            if all(h is not None for h in hits):
                for job, hit in zip(batch, hits):
                    self.outcomes[job.id] = hit
                self.cached += len(batch)
            else:
                todo_batches.append(batch)
        total = sum(len(b) for b in todo_batches)
        run_batch = make_run_batch() if todo_batches else None
        with tqdm(total=total, desc=self.stage, unit="item", disable=not self.progress or not total) as bar:
            for batch in todo_batches:
                for job, outcome in zip(batch, run_batch(batch)):
                    self._store(job, outcome)
                bar.update(len(batch))

    def summary(self) -> dict:
        return {"cached": self.cached, "computed": self.computed, "transient_failures": len(self.transient)}
