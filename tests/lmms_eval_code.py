"""lmms-eval's own functions, read from its released package (``requirements-parity.txt``).

Its task modules are loaded from their files as they ship. What is *not* run is lmms-eval's
harness: ``lmms_eval.tasks``' and ``lmms_eval.tasks._task_utils``' ``__init__``s (they import the whole
evaluator and its ~50 dependencies) are replaced by bare packages whose ``__path__`` is the real
folder, and ``datasets`` and ``lmms_eval.utils`` (used for a type annotation and for finding the
Hugging Face cache in functions not called here) by empty modules. The model classes import the
LLaVA-NeXT repository (or ``accelerate``, ``loguru``) at the top, so their frame samplers
(``LlavaVid.load_video``, ``LongVA.load_video``, ``Gemma4._sample_video_frames``,
``Qwen3_VL._build_video_kwargs``) are cut out of the shipped source with ``ast`` and run as plain
functions, and their constructors' defaults are read from it; ``model_utils/load_video.py`` (PyAV
and numpy only) is loaded from its file.
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


def registered_class(model_name: str) -> tuple[str, str]:
    """The (file under ``lmms_eval/models``, class) that ``--model <model_name>`` runs: its chat class
    where it has one, else its simple one (``registry_v2.ModelRegistryV2.resolve``), read from the
    tables in ``lmms_eval/models/__init__.py``."""
    tables = {}
    for node in ast.parse((ROOT / "models" / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("AVAILABLE_SIMPLE_MODELS", "AVAILABLE_CHAT_TEMPLATE_MODELS"):
                tables[node.targets[0].id] = ast.literal_eval(node.value)
    if model_name in tables["AVAILABLE_CHAT_TEMPLATE_MODELS"]:
        return f"chat/{model_name}.py", tables["AVAILABLE_CHAT_TEMPLATE_MODELS"][model_name]
    return f"simple/{model_name}.py", tables["AVAILABLE_SIMPLE_MODELS"][model_name]


def task_kwargs(task_yaml: str, model: str) -> dict:
    """The ``lmms_eval_specific_kwargs`` a task gives ``--model <model>``: its entry when it has one,
    else its ``default`` entry (lmms_eval/api/task.py)."""
    text = (ROOT / "tasks" / task_yaml).read_text()
    config = yaml.safe_load("".join(line for line in text.splitlines(True) if "!function" not in line))
    kwargs = config["lmms_eval_specific_kwargs"]
    return dict(kwargs[model]) if model in kwargs else dict(kwargs["default"])


def _class(model_file: str, class_name: str) -> ast.ClassDef:
    for node in ast.parse((ROOT / "models" / model_file).read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node
    raise LookupError(f"{class_name} not in {model_file}")


def _method(model_file: str, class_name: str, method: str) -> ast.FunctionDef:
    for item in _class(model_file, class_name).body:
        if isinstance(item, ast.FunctionDef) and item.name == method:
            return item
    raise LookupError(f"{class_name}.{method} not in {model_file}")


def model_method(model_file: str, class_name: str, method: str, **globals_):
    """A method of a model class in ``lmms_eval/models/<model_file>`` (``simple/...`` or
    ``chat/...``), as shipped, run without its module's imports (``globals_`` gives the names it uses)."""
    namespace = dict(globals_)
    module = ast.Module([_method(model_file, class_name, method)], [])
    exec(compile(module, f"lmms_eval/models/{model_file}", "exec"), namespace)
    return namespace[method]


def method_names(model_file: str, class_name: str) -> set[str]:
    """The methods a model class defines itself (not those it inherits)."""
    return {item.name for item in _class(model_file, class_name).body if isinstance(item, ast.FunctionDef)}


def base_names(model_file: str, class_name: str) -> list[str]:
    return [ast.unparse(base) for base in _class(model_file, class_name).bases]


def init_defaults(model_file: str, class_name: str) -> dict:
    """The defaults of a model class's ``__init__`` keyword arguments, those that are plain values
    or arithmetic on them (``64 * 32 * 32``)."""
    arguments = _method(model_file, class_name, "__init__").args
    named = arguments.args[len(arguments.args) - len(arguments.defaults):]
    defaults = {}
    for argument, default in zip(named, arguments.defaults):
        try:
            defaults[argument.arg] = eval(compile(ast.Expression(default), model_file, "eval"), {"__builtins__": {}})
        except NameError:  # a module-level name (e.g. best_fit_attn_implementation)
            continue
    return defaults


def method_strings(model_file: str, class_name: str, method: str) -> set[str]:
    """Every string literal in a method's body (what content types it builds, say)."""
    return {node.value for node in ast.walk(_method(model_file, class_name, method))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def model_utils_module(name: str):
    """``lmms_eval/models/model_utils/<name>.py``, loaded from its file (not through
    ``lmms_eval.models``, whose ``__init__`` builds the model registry)."""
    spec = importlib.util.spec_from_file_location(f"lmms_eval_model_utils_{name}",
                                                  ROOT / "models" / "model_utils" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def api_module(name: str):
    """``lmms_eval/api/<name>.py``, loaded from its file (``reasoning.py`` needs only ``typing``)."""
    spec = importlib.util.spec_from_file_location(f"lmms_eval_api_{name}", ROOT / "api" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_default(flag: str):
    """The default of a command-line option of ``python -m lmms_eval`` (``lmms_eval/__main__.py``)."""
    for node in ast.walk(ast.parse((ROOT / "__main__.py").read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == flag):
            return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "default")
    raise LookupError(f"{flag} not in lmms_eval/__main__.py")
