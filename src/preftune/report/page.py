"""One self-contained HTML page: header (config, final numbers, notes) and the figures.

Images are inline base64 PNG and the style sheet is inline, so the file reads offline, from
an e-mail attachment or a CI artifact; nothing on it needs JavaScript (the full config sits
in a ``<details>`` element).
"""

from __future__ import annotations

import base64
import html
import math
from typing import Optional

import yaml

from preftune.report.runs import Run

# The config keys the header shows; the full config is one click away.
HEADLINE_KEYS = (
    ("model", "model_name_or_path"), ("method", "method"), ("method", "loss_type"),
    ("method", "beta"), ("method", "gamma"), ("method", "simpo_gamma"),
    ("method", "gamma_beta_ratio"), ("method", "cpo_alpha"), ("training", "learning_rate"),
    ("training", "max_steps"), ("training", "per_device_train_batch_size"),
    ("training", "gradient_accumulation_steps"), ("training", "lr_scheduler_type"),
    ("data", "dataset_name"), ("data", "max_length"), ("data", "max_prompt_length"),
    ("training", "seed"),
)
FINAL_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
                 "rewards/rejected", "logps/chosen", "logps/rejected", "nll_loss",
                 "tokens_per_second", "eval_loss", "eval_rewards/accuracies",
                 "eval_rewards/margins")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif;
       margin: 24px auto; max-width: 1200px; color: #1f2328; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
td, th { border: 1px solid #d0d7de; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #9a6700; } .muted { color: #656d76; }
figure { margin: 12px 0 22px; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def saved_setting(config: dict, section: str, key: str):
    """A saved config's value. The objective's hyperparameters sit under
    ``method.hyperparameters``, by the spelling given (flat in older runs' configs)."""
    values = config.get(section) or {}
    return values[key] if key in values else (values.get("hyperparameters") or {}).get(key)


def config_table(runs: list[Run]) -> str:
    rows = []
    described = [run.settings.get("method") for run in runs]
    if any(described):
        rows.append(("objective", [d or "-" for d in described]))
    for section, key in HEADLINE_KEYS:
        values = [saved_setting(run.config, section, key) for run in runs]
        if any(v is not None for v in values):
            rows.append((key, ["-" if v is None else v for v in values]))
    steps = [run.settings.get("steps") or run.last_step for run in runs]
    rows.append(("steps logged", ["-" if s is None else s for s in steps]))
    head = "".join(f"<th>{esc(run.name)}</th>" for run in runs)
    body = "".join(f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{esc(v)}</td>" for v in vs)
                   + "</tr>" for k, vs in rows)
    return f"<table><tr><th>setting</th>{head}</tr>{body}</table>"


def final_table(runs: list[Run]) -> str:
    names = [m for m in FINAL_METRICS if any(m in run.series for run in runs)]
    if not names:
        return "<p class='muted'>No metrics logged yet.</p>"
    head = "".join(f"<th>{esc(run.name)}</th>" for run in runs)
    body = []
    for name in names:
        cells = []
        for run in runs:
            final = run.final(name)
            cells.append("<td class='num'>-</td>" if final is None else
                         f"<td class='num'>{number(final[1])} <span class='muted'>"
                         f"(step {final[0]})</span></td>")
        body.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>final value</th>{head}</tr>{''.join(body)}</table>"


def notes_list(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li class='note'>{esc(n)}</li>" for n in notes)
    return f"<h2>Notes</h2><ul>{items}</ul>"


def full_configs(runs: list[Run]) -> str:
    parts = []
    for run in runs:
        if run.config:
            text = yaml.safe_dump(run.config, sort_keys=False)
            parts.append(f"<details><summary>full config of {esc(run.name)}</summary>"
                         f"<pre>{esc(text)}</pre></details>")
    return "".join(parts)


def figure_block(title: str, slug: str, png: bytes, file_name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure id='{esc(slug)}'><img alt='{esc(title)}' src='data:image/png;base64,"
            f"{data}'><figcaption class='muted'>{esc(title)} ({esc(file_name)})</figcaption>"
            "</figure>")


def build_page(runs: list[Run], figures: list[tuple[str, str, bytes, str]],
               notes: list[str]) -> str:
    """``figures``: (title, slug, PNG bytes, PNG file name) in page order."""
    title = "preftune run report: " + ", ".join(run.name for run in runs)
    where = "<br>".join(esc(run.folder) for run in runs)
    blocks = "".join(figure_block(*f) for f in figures)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1><p class='muted'>{where}</p>"
            f"<h2>Run</h2>{config_table(runs)}{full_configs(runs)}"
            f"<h2>Final numbers</h2>{final_table(runs)}{notes_list(notes)}"
            f"<h2>Plots</h2>{blocks}</body></html>\n")
