"""Run an ablation notebook from the command line, its parameters set, and save it with its outputs.

    python notebooks/run.py notebooks/ablation_mix_ratio.ipynb --quick --out runs/ablation_mix_ratio

``--quick`` is the reduced toy setting (what the tests run: a few minutes on 2 CPU cores); without
it the notebook runs its full toy setting (hours). The executed notebook, outputs and plot included,
is written to ``OUT/<name>.ipynb`` (``--executed`` elsewhere, e.g. over the notebook itself to commit
it executed). As papermill does, the parameters go into a cell inserted after the cell tagged
``parameters``, so the saved notebook shows what it ran with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def execute(notebook_path: Path, out: Path, quick: bool, executed: Path | None = None, timeout_s: int = 3600) -> Path:
    """Execute ``notebook_path`` with ``QUICK`` and ``OUT`` set (from the repository root, as the
    notebooks import ``toy``); returns where the executed notebook was written."""
    notebook = nbformat.read(notebook_path, as_version=4)
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    if not tagged:
        raise SystemExit(f"error: {notebook_path} has no cell tagged 'parameters'")
    cell = nbformat.v4.new_code_cell(f"QUICK = {quick}\nOUT = {str(out)!r}", metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, cell)
    NotebookClient(notebook, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    executed = executed or out / notebook_path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, executed)
    return executed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--quick", action="store_true", help="the reduced toy setting the tests run")
    parser.add_argument("--out", type=Path, required=True, help="the runs, the plot and the executed notebook")
    parser.add_argument("--executed", type=Path, default=None, help="where to write the executed notebook")
    args = parser.parse_args()
    if not args.notebook.exists():
        parser.error(f"no such notebook: {args.notebook}")
    out = args.out.resolve()
    print(f"executed notebook: {execute(args.notebook, out, args.quick, args.executed)}")


if __name__ == "__main__":
    main()
