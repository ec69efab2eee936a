"""``tpo fit|validate|precompute-ref --config FILE.yaml``: LightningCLI over TPOModule and PreferenceDataModule."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from tpo.data.datamodule import PreferenceDataModule
from tpo.export import HFExport
from tpo.module import TPOModule
from tpo.throughput import ThroughputLogger


class TPOCLI(LightningCLI):
    """Every config value can be overridden on the command line (``--model.beta 0.3``); the
    resolved config is saved as ``config.yaml`` next to the TensorBoard logs."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_path", "data.model_path")
        parser.link_arguments("model.family", "data.family")
        parser.add_lightning_class_args(HFExport, "export")
        parser.add_lightning_class_args(ThroughputLogger, "throughput")

    def before_fit(self) -> None:
        self._started = time.perf_counter()

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        checkpoint = (ckpt.last_model_path or ckpt.best_model_path) if ckpt else None
        export = next((c.path for c in trainer.callbacks if isinstance(c, HFExport)), None)
        train = {k: round(v, 4) for k, v in self.model.last_epoch_means.items()}
        val = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
               if k in ("val/loss", "val/rewards/accuracy", "val/rewards/margin")}
        print(f"\nTPO fit done in {time.perf_counter() - self._started:.0f}s\n"
              f"  last epoch (train mean): {train}\n  validation: {val}\n"
              f"  logs:       {trainer.log_dir}\n  checkpoint: {checkpoint or '(none)'}\n"
              f"  export:     {export or '(none)'}")


def precompute_reference(args: list[str]) -> None:
    """``tpo precompute-ref --config X.yaml``: write (or check) ``model.reference_logps`` for the data."""
    import torch

    cli = TPOCLI(TPOModule, PreferenceDataModule, run=False, args=args, save_config_callback=None)
    module, datamodule = cli.model, cli.datamodule
    path = module.hparams.reference_logps
    if path is None:
        raise SystemExit("error: set --model.reference_logps PATH (the file to write)")
    existed = Path(path).exists()
    datamodule.setup("fit")
    module.configure_model()
    module.to("cuda" if torch.cuda.is_available() else "cpu")
    module.load_reference_logps(datamodule)  # computes and saves when missing, then checks it
    state = "checked" if existed else "written"
    print(f"reference log-probs for {len(module.reference_table)} records {state}: {path}")


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["precompute-ref"]:
        precompute_reference(args[1:])
        return
    TPOCLI(TPOModule, PreferenceDataModule, save_config_kwargs={"overwrite": True}, args=args)
