"""`tpo fit --config demo.yaml` end to end: everything a run writes lands under default_root_dir."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_fit_writes_logs_config_checkpoint_and_export_under_root_dir(tmp_path, pref_file):
    root = tmp_path / "my_run"
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs/demo.yaml"),
           "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1", "--data.path", str(pref_file),
           "--data.val_fraction", "0.25", "--model.beta", "0.25", "--model.time_instruction", "true"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = root / "lightning_logs" / "version_0"
    assert "export:" in done.stdout and str(run / "export") in done.stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["beta"] == 0.25 and config["data"]["path"] == str(pref_file)
    assert list((run / "checkpoints").glob("*.ckpt"))
    ckpt = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=False, mmap=True)
    assert config["model"]["time_instruction"] is True
    assert ckpt["hyper_parameters"]["time_instruction"] is True  # the module's adapter encodes every batch
    assert "time_instruction" not in ckpt["datamodule_hyper_parameters"]
    # evaluation prompts the trained model as training did, from the export or the checkpoint
    from tpo.evaluate.model import load_for_eval, trained_time_instruction

    trained = json.loads((run / "export" / "tpo_prompt.json").read_text())
    assert trained["time_instruction"] is True and trained["video_backend"] in ("decord", "pyav")
    assert sum(trained["num_frames"].values()) > 0 and all(int(k) > 0 for k in trained["num_frames"])
    assert "video backend:" in done.stdout
    assert trained_time_instruction(str(run / "export"))
    assert trained_time_instruction(str(next((run / "checkpoints").glob("*.ckpt"))))
    assert load_for_eval(str(run / "export"), device="cpu")[0].time_instruction
    assert not trained_time_instruction("builtin:tiny-llava_onevision")
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "export" / "config.json").exists() and (run / "export" / "processor_config.json").exists()
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_validate_and_precompute_ref_run_outside_inference_mode(tmp_path, pref_file):
    """Outside fit Lightning runs under torch.inference_mode (on any backend but gloo), where a sharded
    model's all-gather fails on inference tensors: every command runs the model under no_grad."""
    import os

    log = tmp_path / "modes.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    common = ["--config", str(REPO / "lightning_configs/demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
              "--data.path", str(pref_file), "--data.val_fraction", "0.25", "--trainer.enable_progress_bar", "false",
              "--trainer.callbacks+=step_log.InferenceModeLog", "--trainer.callbacks.path", str(log)]
    for command, extra in (("validate", []), ("precompute-ref", ["--model.reference_logps", str(tmp_path / "ref.json")])):
        done = subprocess.run([sys.executable, "-m", "tpo", command, *common, *extra], capture_output=True, text=True,
                              cwd=tmp_path, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"validate", "predict"}
    assert not any(r["inference_mode"] for r in rows)


def test_unknown_family_in_config_is_a_clear_error(tmp_path, pref_file):
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs/demo.yaml"),
           "--trainer.default_root_dir", str(tmp_path), "--data.path", str(pref_file), "--model.family", "video_llama_3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 2
    assert "error: unknown model family 'video_llama_3'" in done.stderr and "qwen2_5_vl" in done.stderr
    assert "Traceback" not in done.stderr


def _refused(tmp_path, capsys, *settings: str, command: str = "fit") -> str:
    """What ``tpo <command> --config demo.yaml <settings>`` prints when parsing refuses them (in this process:
    parsing fails before anything is built)."""
    from tpo.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([command, "--config", str(REPO / "lightning_configs/demo.yaml"), "--trainer.default_root_dir",
              str(tmp_path), *settings])
    assert stopped.value.code == 2 and not (tmp_path / "lightning_logs").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("setting,value,line", [
    ("--model.beta", "-1", "--model.beta -1: must be >= 0"),
    ("--model.alpha", "-0.5", "--model.alpha -0.5: must be >= 0"),
    ("--data.val_fraction", "1.5", "--data.val_fraction 1.5: must be <= 1"),
    ("--data.batch_size", "0", "--data.batch_size 0: must be > 0"),
    ("--data.max_pairs", "0", "--data.max_pairs 0: must be > 0"),  # an Optional range
    ("--data.batch_size", "1.5", "--data.batch_size 1.5: must be a valid integer"),
    ("--trainer.max_epochs", "many", "--trainer.max_epochs many: must be an integer"),
    ("--model.dtype", "float8", "--model.dtype float8: must be one of float32, bfloat16, float16"),
    ("--progress.every_n_steps", "-1", "--progress.every_n_steps -1: must be >= 0"),
])
def test_an_out_of_range_setting_is_one_line_with_its_range(tmp_path, capsys, setting, value, line):
    assert _refused(tmp_path, capsys, setting, value) == f"error: {line}\n"  # no usage, no pydantic report


@pytest.mark.parametrize("command", ["fit", "validate", "precompute-ref"])
@pytest.mark.parametrize("settings,line", [
    (["--model.bta", "0.1"], "unknown setting --model.bta; did you mean --model.beta?"),
    (["--trainer.devcies=2"], "unknown setting --trainer.devcies; did you mean --trainer.devices?"),
    (["--modle.beta", "0.1"], "unknown setting --modle.beta; did you mean --model.beta?"),
    (["--data.bsz", "2"], "unknown setting --data.bsz; see --help"),  # nothing close enough to suggest
])
def test_a_misspelled_setting_is_one_line_with_the_closest_one(tmp_path, capsys, command, settings, line):
    assert _refused(tmp_path, capsys, *settings, command=command) == f"error: {line}\n"


def test_a_misspelled_key_in_a_config_file_is_one_line_with_the_closest_one(tmp_path, capsys):
    (tmp_path / "typo.yaml").write_text("model:\n  bta: 0.1\n")
    err = _refused(tmp_path, capsys, "--config", str(tmp_path / "typo.yaml"))
    assert err == "error: unknown setting model.bta; did you mean model.beta?\n"


def _option_help(help_text: str, option: str) -> str:
    """The text ``--help`` gives ``option`` (the option and its metavar left out)."""
    lines = iter(help_text.splitlines())
    first = next(line for line in lines if line.strip().split(" ")[0] == option)
    text = re.split(r"\s{2,}", first.strip(), maxsplit=1)[1:]
    for line in lines:
        if not re.match(r"\s{3,}\S", line):
            break
        text.append(line.strip())
    return " ".join(text)


def test_help_gives_every_setting_its_own_text_without_rst_markup(capsys):
    from tpo.cli import main
    from tpo.evaluate.__main__ import main as evaluate

    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--help"])
    fit = capsys.readouterr().out
    assert stopped.value.code == 0 and "``" not in fit
    assert _option_help(fit, "--model.alpha").startswith("weight α of the SFT term")
    assert "alpha" not in _option_help(fit, "--model.beta")
    for option in ("--model.lr", "--model.weight_decay", "--model.warmup_ratio", "--data.num_workers", "--data.seed"):
        assert not _option_help(fit, option).startswith("(type:"), option
    with pytest.raises(SystemExit) as stopped:
        evaluate(["niah-make", "--help"], prog="tpo evaluate")
    niah_make = capsys.readouterr().out
    assert stopped.value.code == 0
    for option in ("--out", "--depths", "--per-cell", "--seed"):
        assert _option_help(niah_make, option), option


def test_a_run_prints_no_lightning_tips_nor_its_deprecation_warnings(tmp_path, pref_file):
    """Lightning's "Tip" lines (litlogger; litmodels without a ModelCheckpoint of one's own) and the
    FutureWarning of its _pytree.py are not for a tpo user to act on."""
    config = yaml.safe_load((REPO / "lightning_configs/demo.yaml").read_text())
    config["trainer"].pop("callbacks", None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "tpo", "fit", "--config", str(tmp_path / "config.yaml"), "--trainer.default_root_dir",
           str(tmp_path), "--data.path", str(pref_file), "--data.val_fraction", "0.25", "--trainer.max_steps", "1",
           "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "TPO fit done" in done.stdout
    assert "Tip:" not in output and "LeafSpec" not in output and "deprecated" not in output, output[-3000:]


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "lightning_configs").glob("*.yaml")))
def test_every_recipe_parses(config):
    done = subprocess.run([sys.executable, "-m", "tpo", "fit", "--config", str(REPO / "lightning_configs" / config),
                           "--print_config"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trainer = yaml.safe_load(done.stdout)["trainer"]
    if config.endswith("_7b_tpo.yaml"):  # the paper's global batch of 64 pairs on one 8-GPU node
        data = yaml.safe_load(done.stdout)["data"]
        assert data["batch_size"] * trainer["devices"] * trainer["num_nodes"] * trainer["accumulate_grad_batches"] == 64
        assert trainer["strategy"]["class_path"] == "tpo.sharding.FSDP2Strategy"


def test_one_entry_point_lists_and_runs_every_command(tmp_path):
    done = subprocess.run(["tpo", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("fit", "validate", "precompute-ref", "evaluate", "data"):
        assert f"\n  {command} " in done.stdout
    done = subprocess.run(["tpo", "data", "run", "--config", "nope.yaml"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "error: config file not found: nope.yaml" in done.stderr
    done = subprocess.run(["tpo", "evaluate", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: tpo evaluate" in done.stdout
    done = subprocess.run(["tpo", "trian"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown command 'trian'" in done.stderr


def test_a_bug_is_not_reported_as_a_user_mistake(monkeypatch):
    """Only our error type means "your input is wrong"; anything else keeps its traceback."""
    import tpo.evaluate.__main__ as evaluate_cli

    def bug(args):
        raise KeyError("a bug in tpo")

    monkeypatch.setattr(evaluate_cli, "_niah_make", bug)
    with pytest.raises(KeyError, match="a bug in tpo"):
        evaluate_cli.main(["niah-make", "--out", "x"])
