"""The end-to-end toy reproduction: data_gen -> tpo fit -> evaluation, every stage the real one.

Used by ``benchmarks/toy_reproduction.py`` (Table 2 at toy scale) and the ablation notebooks.
One :class:`PipelineRun` holds the settings — the toy world's by default; ``model_path``,
``train_config`` and ``benchmark`` switch it to a real model and benchmark — and its methods are
the pipeline's steps:

- :meth:`PipelineRun.base_model`: the toy base model, one for every seed (the committed one);
- :meth:`PipelineRun.split`: long clips and their questions, of the *dev* split (calibration and
  tuning) or the *test* split (the final readout only); the moment questions on window clips
  (``kind="window"``); toy haystacks (``kind="niah"``);
- :meth:`PipelineRun.generate`: ``data_gen`` on fresh toy clips with the toy LLM server, the base
  model answering on ``S_a`` and ``S_b`` (``preferences.jsonl``), and the same run without the
  post-filter (the cache makes the second run only re-write the output);
- :meth:`PipelineRun.fit`: ``tpo fit`` with ``lightning_configs/toy_tpo.yaml`` (``beta=0`` is
  SFT on the preferred answers: the DPO term then has no gradient; ``max_pairs`` caps the pairs);
- :meth:`PipelineRun.evaluate`: accuracy on a split, overall and per question category, by
  likelihood scoring (or generation), at any number of frames;
- :func:`scalars`: the last value of each TensorBoard scalar of a ``fit`` run.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import data_gen

from toy.base import TOY_VERSION, ToyBaseConfig, toy_base_path
from toy.niah import write_toy_niah
from toy.world import FRAMES_PER_OBJECT, NUM_FRAMES, WINDOW_OBJECTS, is_reply, reply, write_toy_split

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "lightning_configs" / "toy_tpo.yaml"
DATA_GEN_CONFIG = Path(data_gen.__file__).parent / "configs" / "toy.yaml"
# Clip seeds: a seed's data_gen clips use the seed itself (0, 1, 2, ...; calibration 100, 101); the
# dev and test clips have their own. 10_000 was the test split of the retired world (old table).
SPLIT_SEEDS = {"dev": 30_000, "test": 40_000}
CALIBRATION_SEEDS = (100, 101)  # the learning-rate calibration's seeds, never used for the readout


@dataclass
class PipelineRun:
    out: Path
    base: ToyBaseConfig = field(default_factory=ToyBaseConfig)
    model_path: str | None = None  # a real base model instead of the toy one
    train_config: Path = TRAIN_CONFIG
    benchmark: tuple[str, str] | None = None  # (loader, path), e.g. ("videomme", ".../test.parquet")
    num_frames: int = NUM_FRAMES
    answer_temperature: float = 0.0  # data_gen's answers: greedy, as the paper
    train_videos: int = 1200  # fresh clips per seed for data_gen (about 2,500 kept pairs)
    split_videos: dict = field(default_factory=lambda: {"dev": 200, "test": 500})
    niah: dict = field(default_factory=dict)  # write_toy_niah's lengths, depths, per_cell
    # None: the value in ``train_config`` (the toy recipe's beta, alpha, lr, epochs, batch size)
    epochs: int | None = None
    batch_size: int | None = None
    beta: float | None = None
    alpha: float | None = None
    lr: float | None = None
    val_fraction: float | None = None
    quiet: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self._claim_out()

    def _claim_out(self) -> None:
        """Everything under ``out`` (splits, data, runs, evaluations) is reused by name, so a folder
        made in another version of the toy world (``toy_version``) is refused, never read."""
        marker = self.out / "toy_version"
        found = marker.read_text().strip() if marker.exists() else None
        if found != TOY_VERSION and (found or (self.out.is_dir() and any(self.out.iterdir()))):
            raise SystemExit(f"error: {self.out} holds runs of toy world version {found or 'before 9'}, this is "
                             f"version {TOY_VERSION}; choose another --out or delete it")
        self.out.mkdir(parents=True, exist_ok=True)
        marker.write_text(TOY_VERSION + "\n")

    def base_model(self, **overrides) -> Path | str:
        """The base model, one for every seed; ``overrides`` change its ``ToyBaseConfig`` (calibration)."""
        return self.model_path or toy_base_path(replace(self.base, **overrides))

    def questions(self, split: str = "test") -> dict[str, str]:
        """``{id: question text}`` of a split's long-clip questions."""
        rows = (json.loads(line) for line in self.split(split).read_text().splitlines() if line.strip())
        return {r["id"]: r["question"] for r in rows}

    def split(self, name: str = "test", kind: str = "mcq") -> Path:
        """The ``name`` split's (``dev`` or ``test``) ``kind`` benchmark: ``mcq``, the long clips'
        questions; ``window``, the moment questions on window clips; ``niah``, toy haystacks."""
        root = self._split_root(name)
        if kind == "niah":
            if not (root / "niah" / "niah.jsonl").exists():
                write_toy_niah(root / "niah", **self.niah)
            return root / "niah" / "niah.jsonl"
        if not (root / "mcq.jsonl").exists():
            write_toy_split(root, self.split_videos[name], seed=SPLIT_SEEDS[name])
        return root / f"{kind}.jsonl"

    def _split_root(self, name: str) -> Path:
        return self.out / f"{name}-{self.split_videos[name]}"

    # ---- data ------------------------------------------------------------------------------------
    def generate(self, seed: int, base_url: str) -> dict[str, Path]:
        """``{"filtered": preferences.jsonl, "unfiltered": preferences.jsonl}`` for ``seed``."""
        from data_gen.config import load_config
        from data_gen.pipeline import Pipeline

        root = self.out / f"seed-{seed}"
        videos = root / "videos"
        if not (videos / "mcq.jsonl").exists():
            write_toy_split(videos, self.train_videos, seed=seed)  # only its long clips are used
        paths = {}
        for name, enabled in (("filtered", True), ("unfiltered", False)):
            out = root / f"data-{name}"
            if not (out / "preferences.jsonl").exists():
                if not enabled:  # reuse the captions, questions and answers of the filtered run
                    out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(root / "data-filtered" / "cache.sqlite", out / "cache.sqlite")
                cfg = load_config(str(DATA_GEN_CONFIG), [
                    f"videos={videos / 'videos'}", f"output_dir={out}", f"seed={seed}",
                    f"answer.model={self.base_model()}", f"api.base_url={base_url}",
                    f"postfilter.enabled={str(enabled).lower()}", f"answer.temperature={self.answer_temperature}"])
                Pipeline(cfg, progress=not self.quiet).run()
            paths[name] = out / "preferences.jsonl"
        return paths

    # ---- training --------------------------------------------------------------------------------
    def fit(self, name: str, preferences: Path, seed: int, beta: float | None = None, alpha: float | None = None,
            max_pairs: int | None = None, extra: list[str] = ()) -> Path:
        """``tpo fit`` into ``out/<name>``; returns the Hugging Face export of the trained policy."""
        from tpo.cli import main

        root = self.out / name
        export = next(root.glob("**/export/config.json"), None)
        if export is None:
            args = ["fit", "--config", str(self.train_config), "--seed_everything", str(seed),
                    "--trainer.default_root_dir", str(root),
                    "--trainer.enable_progress_bar", str(not self.quiet).lower(),
                    "--model.model_path", str(self.base_model()), "--data.path", str(preferences)]
            overrides = {"trainer.max_epochs": self.epochs, "data.batch_size": self.batch_size,
                         "data.val_fraction": self.val_fraction, "model.beta": self.beta if beta is None else beta,
                         "model.alpha": self.alpha if alpha is None else alpha, "model.lr": self.lr,
                         "data.max_pairs": max_pairs}
            for key, value in overrides.items():
                if value is not None:
                    args += [f"--{key}", str(value)]
            args += list(extra)
            with _maybe_quiet(self.quiet):
                main(args)
            export = next(root.glob("**/export/config.json"))
        return export.parent

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model: Path | str, name: str, scoring: str = "likelihood", split: str = "test",
                 kind: str = "mcq", num_frames: int | None = None) -> dict:
        """Summary (``accuracy``, ``by_category``) of ``model`` on a split, cached with its
        ``predictions.jsonl`` under the split's ``eval/<name>``: ``name`` must tell models apart.
        Window clips are shown at a long clip's density (``FRAMES_PER_OBJECT`` per object)."""
        import torch

        from tpo.evaluate.benchmarks import load_benchmark
        from tpo.evaluate.likelihood import LikelihoodScorer
        from tpo.evaluate.mcq import evaluate
        from tpo.evaluate.model import load_for_eval, make_answerer

        root = self._eval_dir(name, scoring, split, kind, num_frames)
        if not (root / "summary.json").exists():
            root.mkdir(parents=True, exist_ok=True)
            loader, path = self.benchmark or ("jsonl", self.split(split, kind))
            items = load_benchmark(loader, path).items
            dtype = torch.float32 if self.model_path is None else torch.bfloat16  # the toy model trains in fp32
            adapter, policy, processor = load_for_eval(str(model), dtype=dtype, device="auto")
            if scoring == "likelihood" and self.model_path is None:  # the toy model answers with the option's text
                answerer = LikelihoodScorer(adapter, policy, processor, continuation=reply)  # scored as it answers
            else:
                answerer = make_answerer(scoring, adapter, policy, processor, max_new_tokens=12)
            summary = evaluate(items, answerer, num_frames=self._frames(kind, num_frames), batch_size=32,
                               predictions_path=root / "predictions.jsonl", progress=not self.quiet)
            (root / "summary.json").write_text(json.dumps(summary, indent=2))
        return json.loads((root / "summary.json").read_text())

    def predictions(self, name: str, scoring: str = "likelihood", split: str = "test", kind: str = "mcq",
                    num_frames: int | None = None) -> list[dict]:
        """The ``predictions.jsonl`` rows of an evaluated model."""
        path = self._eval_dir(name, scoring, split, kind, num_frames) / "predictions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _frames(self, kind: str, num_frames: int | None) -> int:
        return num_frames or (FRAMES_PER_OBJECT * WINDOW_OBJECTS if kind == "window" else self.num_frames)

    def _eval_dir(self, name: str, scoring: str, split: str, kind: str, num_frames: int | None) -> Path:
        frames = self._frames(kind, num_frames)
        return self._split_root(split) / "eval" / name / f"{kind}-{scoring}-{frames}f"


def in_form_share(preferences: Path) -> float:
    """The share of pairs whose rejected answer is in the toy's answer form (a colour, a motion or a
    count): an answer about the wrong moment, not a description of the frames it was shown."""
    records = [json.loads(line) for line in preferences.read_text().splitlines() if line.strip()]
    return sum(is_reply(r["rejected"]) for r in records) / len(records) if records else 0.0


def toy_setting(quick: bool, out: Path) -> PipelineRun:
    """The full toy setting, or the reduced one the tests run: the same committed base, on a few
    clips."""
    if not quick:
        return PipelineRun(out)
    return PipelineRun(out, train_videos=64, split_videos={"dev": 4, "test": 6}, batch_size=4,
                       niah=dict(lengths=(2, 4), depths=(0.0, 1.0), per_cell=1))


def scalars(run_dir: Path) -> dict[str, float]:
    """The last logged value of every TensorBoard scalar under ``run_dir`` (e.g. ``train/loss``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted(Path(run_dir).glob("**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        values.update({tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]})
    return values


@contextlib.contextmanager
def _maybe_quiet(quiet: bool):
    """Lightning's banner and per-run summaries, kept out of a table-printing script's output."""
    if not quiet:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
