"""``tpo``: the one entry point. ``tpo fit|validate|precompute-ref --config FILE.yaml`` is LightningCLI
over TPOModule and PreferenceDataModule; ``tpo evaluate ...`` and ``tpo data ...`` hand over to the
evaluator and to data_gen (which registers itself as a ``tpo.commands`` entry point)."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
import time
import warnings
from argparse import ArgumentError
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

import lightning as L
from jsonargparse import ArgumentParser, DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from pydantic import ValidationError

from tpo import reference
from tpo.clean_exit import StopSignals, run_and_exit
from tpo.data.datamodule import PreferenceDataModule
from tpo.data.decoders import backend_name
from tpo.errors import ConfigError, TPOError
from tpo.export import HFExport
from tpo.module import TPOModule
from tpo.progress import ProgressLog, global_batch
from tpo.resume import ResumableRun, run_of_checkpoint
from tpo.throughput import ThroughputLogger


class TPOCLI(LightningCLI):
    """Every config value can be overridden on the command line (``--model.beta 0.3``); the
    resolved config is saved as ``config.yaml`` next to the TensorBoard logs."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def init_parser(self, **kwargs):
        # exit_on_error=False: a refused setting raises, for parse_arguments to say it in one line
        return super().init_parser(exit_on_error=False, formatter_class=PlainHelpFormatter, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise ConfigError(refused_setting(err, setting_names(parser))) from None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(HFExport, "export")
        parser.add_lightning_class_args(ThroughputLogger, "throughput")
        parser.add_lightning_class_args(ProgressLog, "progress")  # after throughput: it reads its pairs/s
        # validate and precompute-ref run under torch.inference_mode otherwise (except on gloo), and a
        # sharded (FSDP2) model's all-gather then fails on inference tensors
        parser.set_defaults({"trainer.inference_mode": False})

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        if self.subcommand == "fit" and (logger := self._logger_of_resumed_run()) is not None:
            kwargs["logger"] = logger
        return super().instantiate_trainer(**kwargs)

    def _logger_of_resumed_run(self) -> TensorBoardLogger | None:
        """``fit --ckpt_path <root>/lightning_logs/version_N/checkpoints/X`` logs into version_N again, so that
        a run's curves and checkpoints stay in one folder (the default logger would start version_N+1)."""
        config = self.config.fit
        run, root = run_of_checkpoint(config.ckpt_path), Path(config.trainer.default_root_dir or os.getcwd())
        if config.trainer.logger not in (None, True) or not run or run.parent != (root / "lightning_logs").resolve():
            return None  # a logger of one's own, or a checkpoint of another root: a new version
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # the run's own
        return TensorBoardLogger(root, version=run.name)

    def before_fit(self) -> None:
        self._started = time.perf_counter()

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a broadcast from rank 0: every rank must ask
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        checkpoint = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else None
        export = next((c.path for c in trainer.callbacks if isinstance(c, HFExport)), None)
        train = {k: round(v, 4) for k, v in self.model.last_epoch_means.items()}
        val = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
               if k in ("val/loss", "val/rewards/accuracy", "val/rewards/margin")}
        lora = f"  LoRA: {self.model.lora_summary}\n" if self.model.lora_summary else ""
        pairs, made_of = global_batch(trainer)
        print(f"\nTPO fit done in {time.perf_counter() - self._started:.0f}s on {trainer.world_size} process(es)\n"
              f"  global batch: {pairs} pairs = {made_of}\n"
              f"  training pairs: {self.datamodule.selection}\n"
              f"  last epoch (train mean): {train}\n  validation: {val}\n"
              f"  skipped optimizer steps (non-finite gradient norm): {self.model.skipped_steps}\n"
              f"  video backend: {backend_name()}\n"
              f"  pair layout: {self.model.layout_description}\n{lora}"
              f"  logs:       {log_dir}\n  checkpoint: {checkpoint or '(none)'}\n"
              f"  export:     {export or '(none)'}")


@contextlib.contextmanager
def _our_args():
    """We hand LightningCLI the command line ourselves (its first word is our command, not its own), so
    its warning against passing ``args`` as well as having a command line does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        yield


def precompute_reference(args: list[str]) -> None:
    """``tpo precompute-ref --config X.yaml``: write (or check) ``model.reference_logps`` for the data,
    with the trainer (devices, strategy, precision) of the config, as the training run will use it."""
    with _our_args():
        cli = TPOCLI(TPOModule, PreferenceDataModule, run=False, args=args, save_config_callback=None)
    path = cli.model.hparams.reference_logps
    if path is None:
        raise ConfigError("set --model.reference_logps PATH (the file to write)")
    state = reference.precompute(cli.trainer, cli.model, cli.datamodule)
    if cli.trainer.is_global_zero:
        print(f"reference log-probs for {len(cli.model.reference.table)} records {state}: {path}")


def close_process_group(wait_for_peers: bool = True) -> None:
    """Destroy the process group, after all ranks got here (``wait_for_peers``): Lightning keeps it open
    after fit, and a rank that leaves early would break its peers' last collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


TRAINING_COMMANDS = {
    "fit": "train on preference pairs: --config X.yaml, then any --model.*, --data.*, --trainer.* setting",
    "validate": "the validation metrics of a model on the held-out pairs, with a training config",
    "precompute-ref": "write model.reference_logps (reference log-probs per record) with a training config",
}
OTHER_COMMANDS = {
    "evaluate": "benchmarks and needle in a haystack: tpo evaluate mcq|niah-make|niah --help",
    "data": "preference data from videos: tpo data run|merge|import --help",
    "convert": "a released checkpoint into a transformers directory: tpo convert longva SRC DST",
}


def usage() -> str:
    width = max(map(len, {**TRAINING_COMMANDS, **OTHER_COMMANDS}))
    rows = [f"  {name:<{width}}  {text}" for name, text in {**TRAINING_COMMANDS, **OTHER_COMMANDS}.items()]
    return ("usage: tpo <command> [options]\n\ncommands:\n" + "\n".join(rows)
            + "\n\ntpo <command> --help for its options")


def plugin_commands() -> dict:
    """Commands other packages add to ``tpo`` (``tpo.commands`` entry points): ``data`` from data_gen."""
    return {ep.name: ep for ep in entry_points(group="tpo.commands")}


class PlainHelpFormatter(DefaultHelpFormatter):
    """``--help`` text without reStructuredText's double backticks (ours and Lightning's docstrings)."""

    def format_help(self) -> str:
        return super().format_help().replace("``", "")


def setting_names(parser: ArgumentParser) -> list[str]:
    """The keys (``model.beta``) a parser and its subcommands' parsers accept."""
    names = set()
    for action in parser._actions:  # internal: argparse has no public list of a parser's options
        names.update(s[2:] for s in action.option_strings if s.startswith("--"))
        if isinstance(action.choices, dict):  # the subcommands' parsers
            names.update(n for sub in action.choices.values() if isinstance(sub, ArgumentParser)
                         for n in setting_names(sub))
    return sorted(names)


def closest_setting(key: str, names: list[str]) -> str | None:
    """The valid key ``key`` most likely misspells: among its group's keys when the group exists
    (``model.bta``: ``model.beta``), else among all."""
    group, _, leaf = key.rpartition(".")
    siblings = {n.rpartition(".")[2]: n for n in names if n.rpartition(".")[0] == group}
    if group and siblings:
        match = difflib.get_close_matches(leaf, siblings, n=1)
        return siblings[match[0]] if match else None
    match = difflib.get_close_matches(key, names, n=1)
    return match[0] if match else None


def unknown_setting(key: str, names: list[str], dashes: str = "--") -> str:
    match = closest_setting(key, names)
    return f"unknown setting {dashes}{key}" + (f"; did you mean {dashes}{match}?" if match else "; see --help")


BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def requirement(cause: BaseException) -> tuple[str | None, str]:
    """``(value given, what it must be)`` from the innermost error of a refused value."""
    if isinstance(cause, ValidationError):  # a range of tpo/settings.py, checked by pydantic
        error = cause.errors()[0]
        bound = next(((op, v) for op, v in error.get("ctx", {}).items() if op in BOUNDS), None)
        if bound:
            return str(error["input"]), f"must be {BOUNDS[bound[0]]} {bound[1]:g}"
        return str(error["input"]), re.sub("^Input should", "must", error["msg"].split(",")[0])
    first = str(cause).splitlines()[0]
    value = re.search(r"\. Got value: (.*)$", first)
    if choices := re.match(r"Expected a typing\.Literal\[(.*)\]", first):
        return value and value[1], f"must be one of {choices[1].replace(chr(39), '')}"
    if kind := re.match(r"Expected a <class '(\w+)'>", first):
        return value and value[1], f"must be {TYPE_NAMES.get(kind[1], kind[1])}"
    return value and value[1], first[: value.start()] if value else first


def refused_setting(err: ArgumentError, names: list[str]) -> str:
    """One line for what jsonargparse refused, instead of the usage and its (pydantic's) report: an
    unknown key with the closest valid one, or a setting, its value and what it must be."""
    message = str(err)
    if message.startswith("unrecognized arguments: "):
        keys = [a.split("=")[0].lstrip("-") for a in message.split()[2:] if a.startswith("--")]
        return "; ".join(unknown_setting(key, names) for key in keys) if keys else message
    if option := re.search(r"does not accept option '([^']+)'", message):  # a key in a config file
        return unknown_setting(option[1], names, dashes="")
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    key = re.match(r'Parser key "([^"]+)":', message)
    if key is None:
        return " ".join(message.split())
    value, must = requirement(cause)
    return f"--{key[1]}{'' if value is None else ' ' + value}: {must}"


def main(args: list[str] | None = None) -> int | None:
    """``tpo <command> ...`` in this process. Mistakes in the input (bad records, a stale reference file,
    a wrong setting) print as one ``error:`` line (from rank 0) and exit with status 2; anything else
    is a bug in tpo and keeps its traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):
        print(usage(), file=sys.stdout if command else sys.stderr)
        return 0 if command else 2
    if command == "evaluate":
        from tpo.evaluate.__main__ import main as evaluate

        return evaluate(argv[1:], prog="tpo evaluate")
    if command == "convert":
        from tpo.convert import main as convert

        return convert(argv[1:], prog="tpo convert")
    plugins = plugin_commands()
    if command in plugins:
        return plugins[command].load()(argv[1:], prog=f"tpo {command}")
    if command not in TRAINING_COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return train(argv)


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def quiet_libraries() -> None:
    """Silence what our libraries print that a user of tpo cannot act on (in every process: each rank runs it)."""
    # Lightning's tips advertise its cloud packages: litlogger when a Trainer starts, litmodels without a
    # ModelCheckpoint of one's own
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_a_tip)
    # lightning/pytorch/utilities/_pytree.py builds torch's deprecated LeafSpec (Lightning 2.6.6 on torch 2.14)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # torchdata's StatefulDataLoader calls a deprecated torch function at every iterator (torchdata 0.11)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")


def train(argv: list[str]) -> None:
    """``fit``, ``validate`` and ``precompute-ref``, on as many processes as the config's trainer starts."""
    quiet_libraries()
    with StopSignals() as signals:
        try:
            if argv[0] == "precompute-ref":
                precompute_reference(argv[1:])
            else:
                with _our_args():
                    TPOCLI(TPOModule, PreferenceDataModule, save_config_kwargs={"overwrite": True}, args=argv,
                           trainer_defaults={"callbacks": [ResumableRun(argv, signals)]})
            close_process_group()
        except TPOError as err:
            if rank_zero_only.rank == 0:
                print(f"error: {err}", file=sys.stderr)
            close_process_group(wait_for_peers=False)  # the other ranks stopped on the same error, or were stopped
            raise SystemExit(2) from None
        except (KeyboardInterrupt, SystemExit):
            if signals.status is None:
                raise
            close_process_group(wait_for_peers=False)
            raise SystemExit(signals.status) from None  # not the 1 Lightning gives a KeyboardInterrupt


def run() -> NoReturn:
    """``tpo`` and ``python -m tpo``: :func:`main`, then an exit with its status (``tpo/clean_exit.py``)."""
    run_and_exit(main)
