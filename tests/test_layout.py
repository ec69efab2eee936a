"""Dependencies point one way: data_gen uses tpo; the toy harness uses both; core code never
imports the synthetic builders or another module's private names."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = ["tpo.module", "tpo.cli", "tpo.data.datamodule", "tpo.reference", "tpo.models", "tpo.evaluate.mcq",
        "tpo.evaluate.model", "data_gen.pipeline"]


def _imports(package: str):
    """``(file, imported module, imported names)`` of every import statement in a package."""
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                yield path, node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                yield from ((path, a.name, []) for a in node.names)


def test_tpo_and_data_gen_never_import_the_toy_harness_and_tpo_never_imports_data_gen():
    upward = [(str(p.relative_to(REPO)), m) for pkg in ("tpo", "data_gen") for p, m, _ in _imports(pkg)
              if m.split(".")[0] == "toy"]
    upward += [(str(p.relative_to(REPO)), m) for p, m, _ in _imports("tpo") if m.split(".")[0] == "data_gen"]
    assert upward == []


def test_no_private_names_are_imported_across_modules():
    private = [(str(p.relative_to(REPO)), m, n) for pkg in ("tpo", "data_gen", "toy", "benchmarks", "tests")
               for p, m, names in _imports(pkg) for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []


def test_core_modules_do_not_import_the_synthetic_builders():
    code = f"import sys; import {', '.join(CORE)}; print(sorted(m for m in sys.modules if m.startswith('tpo.synthetic')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _own_names() -> set[str]:
    """Every function, method, class and attribute our own code defines (tests aside)."""
    names = set()
    for pkg in ("tpo", "data_gen", "toy", "benchmarks"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
    return names


def _framework_private_names() -> set[str]:
    """The private names of the framework objects our classes extend or use (instances, so that the
    attributes their ``__init__`` sets count too)."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch import nn
    from transformers import PretrainedConfig

    objects = [nn.Module(), L.LightningModule(), L.LightningDataModule(), L.Callback(), ModelParallelStrategy(),
               PretrainedConfig()]
    return {n for o in objects for n in dir(o) if n.startswith("_") and not n.startswith("__")}


PUBLIC = {"_exit"}  # os._exit is documented, public API


def _private(node, own: set[str], framework: set[str]) -> bool:
    if isinstance(node, (ast.Attribute, ast.FunctionDef)):
        name = node.attr if isinstance(node, ast.Attribute) else node.name
        private = name.startswith("_") and not name.startswith("__") and name not in PUBLIC
        return private and (name in framework or name not in own)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        return any(part.startswith("_") and not part.startswith("__") for m in modules for part in m.split("."))
    return False


def test_framework_internals_have_a_stated_reason():
    """A private name of torch, Lightning or transformers (used, overridden or imported) appears only
    where a comment marked ``internal:`` on the line or the five above says why."""
    own, framework, unexplained = _own_names(), _framework_private_names(), []
    for pkg in ("tpo", "data_gen", "toy", "benchmarks"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                context = lines[max(0, getattr(node, "lineno", 1) - 6):getattr(node, "lineno", 0)]
                if _private(node, own, framework) and not any("internal:" in line for line in context):
                    unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unexplained == []
