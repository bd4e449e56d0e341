"""Run folders -> the report's HTML file and PNG files; the ``preftune report`` command."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Optional, Sequence

from preftune.errors import ConfigError
from preftune.report.page import build_page
from preftune.report.plots import FIGURES, figure_metrics, render
from preftune.report.runs import Run, load_run

# Logged only by some objectives (those with an NLL term); its absence is not news.
OPTIONAL_METRICS = {"nll_loss"}


def run_notes(run: Run, prefix: str) -> list[str]:
    """What the reader should know before trusting the plots of one run."""
    notes = [prefix + n for n in run.notes]
    for name, series in sorted(run.series.items()):
        bad = series.non_finite_steps
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
            notes.append(f"{prefix}{name}: {len(bad)} non-finite value(s), at step(s) {shown}; "
                         "plotted as gaps")
    if run.series:
        expected = [m for f in FIGURES for p in f.panels for m in p.metrics
                    if not m.startswith("eval_") and m not in OPTIONAL_METRICS]
        missing = [m for m in expected if m not in run.series]
        if missing:
            notes.append(f"{prefix}not logged: {', '.join(missing)}")
        if not any(name.startswith("eval_") for name in run.series):
            notes.append(f"{prefix}no evaluation rows (eval_ metrics)")
    return notes


def unique_names(folders: Sequence[Path]) -> list[str]:
    """Folder names, with the parent prepended where two runs share a name."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


def write_report(run_dirs: Sequence, out: Optional[Path] = None) -> Path:
    """Writes the HTML page and one PNG per figure beside it; returns the HTML path.

    ``out`` defaults to ``RUN_DIR/report.html`` for one run and ``report.html`` in the
    working directory for several."""
    if not run_dirs:
        raise ConfigError("report: give at least one run folder (a training output_dir)")
    folders = [Path(d).resolve() for d in run_dirs]
    runs = [load_run(f, name) for f, name in zip(folders, unique_names(folders))]
    if out is None:
        out = runs[0].folder / "report.html" if len(runs) == 1 else Path("report.html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = [n for run in runs for n in run_notes(run, f"{run.name}: " if len(runs) > 1 else "")]
    figures = []
    for figure in FIGURES:
        png = render(figure, runs)
        if png is None:
            notes.append(f"no {figure.title.lower()} plot: none of "
                         f"{', '.join(figure_metrics(figure))} was logged")
            continue
        png_path = out.with_name(f"{out.stem}-{figure.slug}.png")
        png_path.write_bytes(png)
        figures.append((figure.title, figure.slug, png, png_path.name))
    out.write_text(build_page(runs, figures, notes))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="preftune report", description="Plots of a run's metrics.jsonl on one offline "
        "HTML page (several runs: overlaid for comparison), with a PNG file per plot.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a training output_dir")
    parser.add_argument("--out", type=Path, help="HTML file (default RUN_DIR/report.html; "
                        "report.html here for several runs)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("preftune report draws its plots with matplotlib, which is not "
                          "installed: pip install 'preftune[report]' (or matplotlib)")
    path = write_report(args.runs, args.out)
    print(f"report written to {path}")
    return 0
