"""preftune report: the HTML page, its inline plots, the PNG files, and odd runs."""

import base64
import math
import re

from report_runs import ALL_TRAIN_METRICS, eval_row, png_size, train_row, write_metrics
from preftune.cli import main as cli_main
from preftune.report import write_report
from preftune.report.plots import FIGURES, _plottable
from preftune.report.runs import load_run

SLUGS = [f.slug for f in FIGURES]


def inline_images(page: str) -> dict[str, bytes]:
    """figure id -> the PNG bytes inlined in it."""
    found = re.findall(r"<figure id='([^']+)'><img alt='[^']*' src='data:image/png;base64,"
                       r"([A-Za-z0-9+/=]+)'>", page)
    return {slug: base64.b64decode(data) for slug, data in found}


def synthetic_run(folder):
    rows = []
    for step in range(1, 11):
        row = train_row(step)
        if step == 3:
            row["loss"] = "nan"          # how JsonlLog writes a NaN
        if step == 4:
            row["grad_norm"] = "inf"
        rows.append(row)
        if step % 5 == 0:
            rows.append(eval_row(step))
    # A run killed mid-write leaves a cut-off line.
    write_metrics(folder, rows, tail='{"step": 11, "loss": 0.4')
    return folder


def test_every_plot_inline_and_as_png_file(tmp_path):
    run = synthetic_run(tmp_path / "run")
    out = write_report([run])
    assert out == run / "report.html"
    page = out.read_text()
    images = inline_images(page)
    assert sorted(images) == sorted(SLUGS)
    for slug in SLUGS:
        png = (run / f"report-{slug}.png").read_bytes()
        assert images[slug] == png
        width, height = png_size(png)
        assert width >= 400 and 250 <= height <= 600
    # Nothing fetched from elsewhere: no scripts, no external sources.
    assert "<script" not in page and "url(" not in page
    assert re.search(r"(src|href)=['\"](?!data:)", page) is None
    # Final values, derived by hand in report_runs.train_row / eval_row.
    assert re.search(r"<th>loss</th><td class='num'>0.5 <span class='muted'>\(step 10\)", page)
    assert re.search(r"<th>rewards/margins</th><td class='num'>1 <", page)
    assert re.search(r"<th>eval_rewards/margins</th><td class='num'>2 <", page)
    assert "loss: 1 non-finite value(s), at step(s) 3; plotted as gaps" in page
    assert "grad_norm: 1 non-finite value(s), at step(s) 4; plotted as gaps" in page
    assert "metrics.jsonl line 13 is not JSON; skipped" in page
    assert "no saved config" in page


def test_non_finite_values_are_gaps(tmp_path):
    """NaN and infinities reach the plot as NaN (a break in the line), other values as
    logged; the series keeps the original values for the notes."""
    write_metrics(tmp_path, [{"step": 1, "loss": 1.0}, {"step": 2, "loss": "nan"},
                             {"step": 3, "loss": "-inf"}, {"step": 4, "loss": 2.0}])
    series = load_run(tmp_path).series["loss"]
    assert series.non_finite_steps == [2, 3]
    steps, values = _plottable(series)
    assert steps == [1, 2, 3, 4]
    assert values[0] == 1.0 and values[3] == 2.0
    assert math.isnan(values[1]) and math.isnan(values[2])


def test_single_step_missing_metrics_and_no_eval(tmp_path):
    folder = tmp_path / "short"
    write_metrics(folder, [{"step": 1, "epoch": 0.1, "loss": 0.69, "tokens_per_second": 50.0}])
    out = write_report([folder], tmp_path / "pages" / "short.html")
    page = out.read_text()
    images = inline_images(page)
    assert sorted(images) == ["loss", "throughput"]
    assert sorted(p.name for p in out.parent.glob("*.png")) == ["short-loss.png",
                                                               "short-throughput.png"]
    missing = [m for m in ALL_TRAIN_METRICS if m not in ("loss", "tokens_per_second")]
    assert "not logged: " + ", ".join(missing) in page
    assert "no evaluation rows" in page
    assert "no evaluation plot: none of eval_loss" in page
    assert "0.69 <span class='muted'>(step 1)" in page


def test_empty_log_and_missing_folder(tmp_path):
    write_metrics(tmp_path / "empty", [])
    page = write_report([tmp_path / "empty"]).read_text()
    assert "metrics.jsonl holds no rows yet" in page and "No metrics logged yet." in page
    assert inline_images(page) == {}
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2


def test_two_runs_on_one_page_through_the_cli(tmp_path, capsys):
    a = synthetic_run(tmp_path / "a" / "run")
    b = write_metrics(tmp_path / "b" / "run", [train_row(s) for s in (1, 2)]).parent
    out = tmp_path / "compare.html"
    assert cli_main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert "<th>a/run</th><th>b/run</th>" in page
    assert "b/run: no evaluation rows" in page and "a/run: no evaluation rows" not in page
    assert sorted(inline_images(page)) == sorted(SLUGS)
    assert (tmp_path / "compare-loss.png").exists()


def test_report_of_a_real_tiny_run(tmp_path, tokenizer):
    from tiny import random_pairs, tiny_llama
    from preftune.config import load_config
    from preftune.train.metrics import read_jsonl
    from preftune.train.trainer import Trainer

    out = tmp_path / "tiny"
    config = load_config(None, [
        "--output_dir", str(out), "--method", "dpo", "--beta", "0.2", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--eval_steps", "2",
        "--learning_rate", "1e-3", "--progress_bar", "false"])
    pairs = random_pairs(12, vocab=1000)
    Trainer(config, model=tiny_llama(vocab_size=1000), tokenizer=tokenizer, train_pairs=pairs,
            eval_pairs=pairs[:4], log=lambda *_: None).train()
    page = write_report([out]).read_text()
    assert sorted(inline_images(page)) == sorted(SLUGS)
    # The header: objective as the model card describes it, settings from the saved config.
    assert "<th>objective</th><td>dpo (beta=0.2" in page
    assert "<th>learning_rate</th><td>0.001</td>" in page
    assert "<th>steps logged</th><td>3</td>" in page
    last = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r][-1]
    assert f"<th>loss</th><td class='num'>{last['loss']:.4g} " in page
    assert "<h2>Notes</h2>" not in page  # a complete run: nothing missing, nothing odd


def test_without_matplotlib_the_report_names_its_extra(tmp_path, monkeypatch, capsys):
    """matplotlib is the report extra's, not everyone's: its absence is a message."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else found(name, *args))
    write_metrics(tmp_path, [train_row(1)])
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "pip install 'preftune[report]'" in capsys.readouterr().err
