"""``tpo evaluate table RUN...``: the paper's Table 2 from several evaluated models' ``summary.json``.

Each RUN is one row (one model). It is an output folder of ``tpo evaluate mcq`` (``--out``), or a folder
holding one such folder per benchmark; the suggested names are lmms-eval's tasks::

    RUN/longvideobench/summary.json
    RUN/mlvu/summary.json
    RUN/videomme/summary.json               (no --subtitles: "w/o subs")
    RUN/videomme_w_subtitle/summary.json    (--subtitles DIR: "w/ subs")

The folder names are not read: each ``summary.json`` says which benchmark it is (``benchmark``, and for
Video-MME ``subtitles``), so ``RUN/summary.json`` and ``RUN/*/summary.json`` are all found; two for the same
column in one RUN are refused, ``jsonl`` (and NIAH) summaries are left out.

Columns, as Table 2: LongVideoBench (accuracy), MLVU (M-avg: the mean of the per-task accuracies, as
lmms-eval's ``mlvu_dev``), Video-MME short / medium / long / average, each "w/o subs / w/ subs". A cell
with no summary is "–", with a footnote. The rows of a column must have been asked the same way
(protocol, lmms-eval version, prompt variant, reading, frames, scoring, max_new_tokens and the number of
questions); otherwise the command stops with one line naming the benchmark, the setting, and each value
with its runs. The benchmarks of one row may differ (the authors ran lmms-eval with 128 frames for
LongVideoBench and MLVU, 96 for Video-MME). With --out: table.md, table.csv, table.png (a bar chart).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from tpo.errors import TPOError

DASH = "–"
# the summaries of one column, by what summary.json records; lmms-eval's task names
SOURCES = {"longvideobench": "LongVideoBench", "mlvu": "MLVU", "videomme": "Video-MME w/o subs",
           "videomme_w_subtitle": "Video-MME w/ subs"}
DURATIONS = ("short", "medium", "long")
SUBS = (("videomme", "wo_subs"), ("videomme_w_subtitle", "w_subs"))
# (CSV name, source, what is read); Video-MME's "w/o" and "w/" share a Markdown cell, as in the paper
COLUMNS = [("longvideobench", "longvideobench", "accuracy"), ("mlvu_m_avg", "mlvu", "macro_accuracy")] + [
    (f"videomme_{part}_{suffix}", source, part) for part in (*DURATIONS, "average") for source, suffix in SUBS]
HEADERS = ["Model", "LongVideoBench", "MLVU (M-avg)", "Video-MME Short", "Video-MME Medium", "Video-MME Long",
           "Video-MME Average"]
# Settings that change the answers: every row of a column must share them. `items`: how many questions
# were asked (another annotation file, or --limit).
SETTINGS = ("protocol", "lmms_eval_version", "prompt_variant", "reading", "num_frames", "scoring", "max_new_tokens",
            "items")
IMPLIED_BY = {"lmms_eval_version": ("protocol",), "prompt_variant": ("protocol",),
              "max_new_tokens": ("protocol", "scoring")}  # not named again when these differ
# what is read from every summary.json, and from some (by benchmark, by protocol)
REQUIRED = ("benchmark", "accuracy", "items", "errors", "protocol", "reading", "num_frames", "scoring",
            "max_new_tokens")
REQUIRED_FOR = {"videomme": ("subtitles", "by_duration"), "mlvu": ("macro_accuracy",),
                "lmms-eval": ("lmms_eval_version", "prompt_variant")}


@dataclass
class Row:
    name: str
    run: str  # as given on the command line
    summaries: dict[str, tuple[Path, dict]] = field(default_factory=dict)  # source -> (file, summary)

    def value(self, source: str, what: str) -> float | None:
        """A cell as a fraction, or None (not evaluated, or no question of that duration)."""
        if source not in self.summaries:
            return None
        summary = self.summaries[source][1]
        if what in ("accuracy", "macro_accuracy"):
            return summary[what]
        if what == "average":
            return summary["accuracy"]
        cell = summary["by_duration"].get(what)
        return None if cell is None or not cell["scored"] else cell["accuracy"]


def _read(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TPOError(f"cannot read {path} ({err})") from None
    if not isinstance(summary, dict):
        raise TPOError(f"{path}: not a summary.json of `tpo evaluate mcq` (not a JSON object)")
    return summary


def _source(path: Path, summary: dict) -> str | None:
    """The column ``summary`` fills (None: a benchmark Table 2 has no column for), its keys checked."""
    missing = [k for k in REQUIRED if k not in summary]
    benchmark = summary.get("benchmark")
    if not missing and benchmark not in ("videomme", "longvideobench", "mlvu"):
        return None
    missing += [k for k in (*REQUIRED_FOR.get(benchmark, ()), *REQUIRED_FOR.get(summary.get("protocol"), ()))
                if k not in summary]
    if missing:
        raise TPOError(f"{path}: no {', '.join(repr(k) for k in missing)}: not a summary.json written by "
                       "`tpo evaluate mcq` (or by an older tpo: evaluate again)")
    return "videomme_w_subtitle" if benchmark == "videomme" and summary["subtitles"] else benchmark


def read_run(run: str, name: str) -> Row:
    """The row of ``run``: its ``summary.json`` and its subfolders' ``*/summary.json``."""
    folder = Path(run)
    if not folder.is_dir():
        raise TPOError(f"{run}: no such folder (a RUN is a `tpo evaluate mcq --out` folder, or a folder of one "
                       "per benchmark)")
    files = [p for p in (folder / "summary.json",) if p.is_file()] + sorted(folder.glob("*/summary.json"))
    row = Row(name, run)
    for path in files:
        summary = _read(path)
        source = _source(path, summary)
        if source is None:
            continue
        if source in row.summaries:
            raise TPOError(f"{run} holds two {SOURCES[source]} summaries, {row.summaries[source][0]} and {path}: "
                           "give each model its own RUN folder")
        row.summaries[source] = (path, summary)
    if not row.summaries:
        raise TPOError(f"{run}: no summary.json of LongVideoBench, MLVU or Video-MME in it or its subfolders "
                       "(RUN/<benchmark>/summary.json, written by `tpo evaluate mcq --out RUN/<benchmark>`)")
    return row


def _shown(value) -> str:
    return "none" if value is None else repr(value) if isinstance(value, str) else str(value)


def check_comparable(rows: list[Row]) -> None:
    """Refuse a column whose rows were asked differently: one line naming the benchmark, each differing
    setting and its values with their runs (the first such column; the others are counted)."""
    problems = []
    for source, label in SOURCES.items():
        having = [r for r in rows if source in r.summaries]
        values = {key: {} for key in SETTINGS}
        for row in having:
            for key in SETTINGS:
                values[key].setdefault(row.summaries[source][1].get(key), []).append(row.run)
        differ = {k for k, v in values.items() if len(v) > 1}
        named = [k for k in SETTINGS if k in differ and not differ & set(IMPLIED_BY.get(k, ()))]
        if named:
            problems.append(f"on {label}: " + "; ".join(
                f"{key} " + " vs ".join(f"{_shown(v)} ({', '.join(runs)})" for v, runs in values[key].items())
                for key in named))
    if problems:
        more = f" (and {len(problems) - 1} other benchmark(s))" if len(problems) > 1 else ""
        raise TPOError(f"the rows were evaluated differently, so their numbers do not compare: {problems[0]}{more}; "
                       "evaluate every row the same way")


def _percent(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def _cells(row: Row) -> list[str]:
    cells = [row.name, _percent(row.value("longvideobench", "accuracy")), _percent(row.value("mlvu", "macro_accuracy"))]
    for part in (*DURATIONS, "average"):
        pair = [row.value(source, part) for source, _ in SUBS]
        cells.append(DASH if pair == [None, None] else "/".join(_percent(v) for v in pair))
    return cells


def _footnotes(rows: list[Row]) -> list[str]:
    notes = []
    for source, label in SOURCES.items():
        absent = [r.run for r in rows if source not in r.summaries]
        if absent:
            notes.append(f"{DASH}: no {label} summary.json in {', '.join(absent)}")
    for source, _ in SUBS:
        label = SOURCES[source]
        for row in rows:
            if source in row.summaries:
                empty = [d for d in DURATIONS if row.value(source, d) is None]
                if empty:
                    notes.append(f"{DASH}: no {'/'.join(empty)} questions answered in {row.run}'s {label}")
    for row in rows:
        for source, (_, summary) in row.summaries.items():
            if summary["errors"]:
                notes.append(f"{row.run}'s {SOURCES[source]}: {summary['errors']} of {summary['items']} questions "
                             "errored (missing or unreadable video or subtitles) and are left out of its accuracy")
    return notes


def _settings(rows: list[Row]) -> list[str]:
    """What every row shares, per benchmark (check_comparable has made them equal)."""
    parts = []
    for source, label in SOURCES.items():
        summary = next((r.summaries[source][1] for r in rows if source in r.summaries), None)
        if summary is None:
            continue
        protocol = summary["protocol"]
        if protocol == "lmms-eval":
            protocol = f"lmms-eval {summary['lmms_eval_version']} ({summary['prompt_variant']} prompt)"
        parts.append(f"{label}: {summary['num_frames']} frames, {summary['items']} questions, protocol {protocol}, "
                     f"scoring {summary['scoring']}, replies read the {summary['reading']} way")
    return parts


def markdown(rows: list[Row]) -> str:
    """Table 2 as a Markdown table (padded, so it reads as text too), its footnotes and settings."""
    table = [HEADERS] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]

    def line(cells):  # the model's name left, the numbers right
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    lines = [line(table[0]), "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"]
    lines += [line(cells) for cells in table[1:]]
    lines += ["", "Accuracy (%). Video-MME: w/o subs / w/ subs. MLVU: M-avg, the mean over its tasks.", ""]
    lines += ["Asked the same way in every row:"] + [f"- {s}" for s in _settings(rows)]
    notes = _footnotes(rows)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    """One value per column (percent, one decimal; empty: not evaluated)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", "run", *(name for name, _, _ in COLUMNS)])
    for row in rows:
        values = [row.value(source, what) for _, source, what in COLUMNS]
        writer.writerow([row.name, row.run, *("" if v is None else f"{100 * v:.1f}" for v in values)])
    return out.getvalue()


def plot(rows: list[Row], path: Path, title: str = "LongVideoBench, MLVU and Video-MME accuracy") -> Path:
    """Grouped bars, one group per column (Video-MME's w/o and w/ subs apart), one bar per row; a missing
    cell has no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["LongVideoBench", "MLVU\n(M-avg)"] + [
        f"V-MME {part}\n{'w/o' if suffix == 'wo_subs' else 'w/'} subs" for part in (*DURATIONS, "avg")
        for _, suffix in SUBS]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(labels), 4.5))
    for i, row in enumerate(rows):
        values = [row.value(source, what) for _, source, what in COLUMNS]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(values))]
        bars = ax.bar([x for x, v in zip(xs, values) if v is not None], [100 * v for v in values if v is not None],
                      width, label=row.name)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
        for x, v in zip(xs, values):
            if v is None:  # not evaluated: a dash where its bar would stand, not a bar of 0
                ax.text(x, 0, DASH, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def row_names(runs: list[str], names: str | None) -> list[str]:
    """``--names a,b,...`` (one per RUN), else each RUN's folder name (its path where two names clash)."""
    if names is not None:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(runs) or not all(given):
            raise TPOError(f"--names gives {len(given)} name(s) for {len(runs)} RUN(s): give one per RUN, "
                           "comma-separated")
        return given
    short = [Path(r).resolve().name for r in runs]
    return [s if short.count(s) == 1 else r for s, r in zip(short, runs)]


def make_table(runs: list[str], names: str | None = None, out: str | None = None) -> tuple[str, list[Path]]:
    """The Markdown table of ``runs`` (checked comparable) and, with ``out``, the files written there:
    ``table.md``, ``table.csv``, ``table.png``."""
    rows = [read_run(run, name) for run, name in zip(runs, row_names(runs, names))]
    check_comparable(rows)
    text = markdown(rows)
    if out is None:
        return text, []
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(text, encoding="utf-8")
    (folder / "table.csv").write_text(to_csv(rows), encoding="utf-8")
    return text, [folder / "table.md", folder / "table.csv", plot(rows, folder / "table.png")]
