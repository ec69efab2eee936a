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
