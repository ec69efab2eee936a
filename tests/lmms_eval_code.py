"""lmms-eval's own functions, read from its released package (``requirements-parity.txt``).

Its task modules are loaded from their files as they ship. What is *not* run is lmms-eval's
harness: ``lmms_eval.tasks``' and ``lmms_eval.tasks._task_utils``' ``__init__``s (they import the whole
evaluator and its ~50 dependencies) are replaced by bare packages whose ``__path__`` is the real
folder, and ``datasets`` and ``lmms_eval.utils`` (used for a type annotation and for finding the
Hugging Face cache in functions not called here) by empty modules. The model classes import the
LLaVA-NeXT repository at the top, so their frame samplers (``LlavaVid.load_video``,
``LongVA.load_video``) are cut out of the shipped source with ``ast`` and run as plain functions.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import yaml

ROOT = Path(importlib.util.find_spec("lmms_eval").origin).parent


def _bare(name: str, folder: Path | None = None) -> None:
    module = types.ModuleType(name)
    if folder is not None:
        module.__path__ = [str(folder)]
    sys.modules.setdefault(name, module)


def task_module(task: str):
    """``lmms_eval/tasks/<task>/utils.py``, loaded from the installed package."""
    _bare("lmms_eval.tasks", ROOT / "tasks")
    _bare("lmms_eval.tasks._task_utils", ROOT / "tasks" / "_task_utils")
    _bare("lmms_eval.utils")
    if "datasets" not in sys.modules and importlib.util.find_spec("datasets") is None:
        sys.modules["datasets"] = types.SimpleNamespace(Dataset=object)
    name = f"lmms_eval.tasks.{task}.utils"
    _bare(f"lmms_eval.tasks.{task}", ROOT / "tasks" / task)
    spec = importlib.util.spec_from_file_location(name, ROOT / "tasks" / task / "utils.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def task_kwargs(task_yaml: str, model: str) -> dict:
    """The ``lmms_eval_specific_kwargs`` a task gives ``--model <model>``: its entry when it has one,
    else its ``default`` entry (lmms_eval/api/task.py)."""
    text = (ROOT / "tasks" / task_yaml).read_text()
    config = yaml.safe_load("".join(line for line in text.splitlines(True) if "!function" not in line))
    kwargs = config["lmms_eval_specific_kwargs"]
    return dict(kwargs[model]) if model in kwargs else dict(kwargs["default"])


def model_method(model_file: str, class_name: str, method: str, **globals_):
    """A method of a model class in ``lmms_eval/models/simple/<model_file>``, as shipped, run
    without its module's imports (``globals_`` gives the names it uses)."""
    source = (ROOT / "models" / "simple" / model_file).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    namespace = dict(globals_)
                    exec(compile(ast.Module([item], []), f"lmms_eval/models/simple/{model_file}", "exec"), namespace)
                    return namespace[method]
    raise LookupError(f"{class_name}.{method} not in {model_file}")
