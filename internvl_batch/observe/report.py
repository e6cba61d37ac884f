"""The run report: `_report.html` (self-contained: inline SVG plots, no scripts, no links)
and a one-page `_report.png`, beside `_SUCCESS`.

The names start with `_` on purpose: readers of the output (pyarrow, Spark, DuckDB) skip
such names, and would fail on a `report.html` among the parquet parts.
Everything is rendered from the output path alone (`report_data.collect`), so
`internvl-batch report PATH` works for any output, finished or in progress.
"""

from __future__ import annotations

import html
import io
import logging
import time
from typing import Any

import numpy as np

from internvl_batch.job.output import OutputDir
from internvl_batch.observe.report_data import ReportData, collect

log = logging.getLogger("internvl_batch")

REPORT_HTML = "_report.html"
REPORT_PNG = "_report.png"
SECTIONS = ("summary", "throughput", "status", "tiles", "prompt-tokens", "slowest", "errors", "runs")
_STAGE_LABELS = {"read": "read (rows)", "prepare": "prepare (rows)", "inference": "inference (rows x tasks)"}
# One colour per status in every chart: ok green, every failure a warm colour.
STATUS_COLORS = {
    "ok": "#2ca02c",
    "invalid_row": "#ff7f0e",
    "fetch_error": "#d62728",
    "decode_error": "#8c564b",
    "too_large": "#e6ab02",
    "context_overflow": "#e377c2",
    "engine_error": "#7f0000",
}
_OTHER_STATUS = "#bc8f8f"
# Stages in cool colours, each in its own line style, so a line drawn over another shows.
_STAGE_STYLES = {
    "read": {"color": "#9ecae1", "ls": ":"},
    "prepare": {"color": "#3182bd", "ls": "--"},
    "inference": {"color": "#08519c", "ls": "-", "lw": 2.5},
}


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, _OTHER_STATUS)


# -- plots: each draws on one Axes, shared by the HTML sections and the summary PNG ------------


def _rates(samples: list[dict[str, Any]], value, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-second rates between consecutive cumulative samples, at each interval's end."""
    t = np.array([s["t"] for s in samples], float)
    v = np.array([value(s) for s in samples], float)
    if len(t) < 2:
        return np.zeros(0), np.zeros(0)
    dt = np.diff(t)
    keep = dt > 0
    return t[1:][keep] / scale, np.diff(v)[keep] / dt[keep]


def _busy_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples from the last one before any stage had rows: the start-up before it is no throughput."""
    for i, s in enumerate(samples):
        if s["rows"] or any(s.get("stages", {}).values()):
            return samples[max(i - 1, 0) :]
    return []


def plot_throughput(ax, data: ReportData) -> None:
    samples = _busy_samples(data.timeline.get(data.latest_run or "", []))
    scale, unit = (60.0, "minutes") if samples and samples[-1]["t"] > 600 else (1.0, "seconds")
    marker = {"marker": "o", "ms": 3} if len(samples) < 30 else {}
    for stage, label in _STAGE_LABELS.items():
        x, y = _rates(samples, lambda s, stage=stage: s.get("stages", {}).get(stage, 0), scale)
        if len(x) and y.any():
            ax.plot(x, y, label=label, **{"lw": 1.5, **_STAGE_STYLES[stage], **marker})
    x, y = _rates(samples, lambda s: s["rows"], scale)
    if len(x):
        # Thin and on top: it equals the inference stage's line once the sink keeps up.
        ax.plot(x, y, label="output (rows x tasks)", lw=1, color="black", zorder=5, **marker)
    ax.set_xlabel(f"time since the run started ({unit})")
    ax.set_ylabel("rows per second")
    ax.set_title(f"throughput per stage, run {data.latest_run or '-'}")
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no timeline samples yet", ha="center", va="center", transform=ax.transAxes)


def plot_status(ax, data: ReportData) -> None:
    statuses = sorted({s for by in data.status_by_task.values() for s in by}, key=lambda s: (s != "ok", s))
    tasks = sorted(data.status_by_task)
    bottom = np.zeros(len(tasks))
    for status in statuses:
        values = np.array([data.status_by_task[t].get(status, 0) for t in tasks], float)
        ax.bar(tasks, values, bottom=bottom, label=status, color=status_color(status))
        bottom += values
    ax.set_title("rows by task and status")
    ax.set_xlabel("task")
    ax.set_ylabel("rows (row x task pairs)")
    if statuses:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _plot_counts(ax, counts: np.ndarray, title: str, xlabel: str, bins: int | None = None) -> None:
    values = np.nonzero(counts)[0]
    if len(values):
        edges = bins or np.arange(values.min(), values.max() + 2) - 0.5  # one bar per integer value
        ax.hist(values, weights=counts[values], bins=edges, rwidth=0.85)
    else:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")


def plot_tiles(ax, data: ReportData) -> None:
    _plot_counts(ax, data.tiles, "tiles per row", "tiles per row (448px tiles, thumbnail included)")


def plot_prompt_tokens(ax, data: ReportData) -> None:
    _plot_counts(ax, data.prompt_tokens, "prompt tokens per ok row", "prompt tokens per row (tokens)", bins=40)


def _figure(draw, data: ReportData, size=(7, 3.2)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    draw(fig.add_subplot(), data)
    fig.tight_layout()
    return fig


def _svg(draw, data: ReportData) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "internvl-batch"}):
        _figure(draw, data).savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # no XML prolog inside HTML


def render_png(data: ReportData) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8))
    axes = fig.subplots(2, 2)
    for ax, draw in zip(axes.flat, (plot_throughput, plot_status, plot_tiles, plot_prompt_tokens)):
        draw(ax, data)
    fig.suptitle(f"{data.url}: {'finished' if data.finished else 'in progress'}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# -- HTML ------------------------------------------------------------------------------------


class Markup(str):
    """A table cell that is HTML already (a coloured status), not text to escape."""


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cell = lambda v: v if isinstance(v, Markup) else html.escape(_fmt(v))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return "" if v is None else str(v)


def _quantiles(counts: np.ndarray) -> list[Any]:
    """rows, mean, p50, p95, max of the values a bincount holds."""
    n = int(counts.sum())
    if not n:
        return [0, None, None, None, None]
    cum = np.cumsum(counts)
    value = np.arange(len(counts))
    at = lambda q: int(np.searchsorted(cum, q * n))  # noqa: E731  the smallest value with that share below it
    return [n, float((value * counts).sum() / n), at(0.5), at(0.95), int(value[counts > 0].max())]


def _utc(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_s))


def _summary(data: ReportData) -> list[list[Any]]:
    s = data.success or {}
    rows: list[list[Any]] = [["state", "finished" if data.finished else "in progress (no _SUCCESS)"]]
    if s:
        plan, engine, res, c = s.get("plan", {}), s.get("engine", {}), s.get("resources", {}), s.get("counters", {})
        stage_ms = s.get("stage_ms", {})
        spent = sum(stage_ms.values()) or 1.0
        rows += [
            ["run_id", s.get("run_id")], ["model", res.get("model")],
            ["replicas x GPUs per replica", f"{res.get('replicas', '-')} x {res.get('gpus_per_replica', '-')}"],
            ["started (UTC)", s.get("started_at")], ["ended (UTC)", s.get("ended_at")], ["wall clock (s)", s.get("wall_s")],
            ["GPU-hours (reserved)", s.get("gpu_hours")],
            ["manifest rows", plan.get("manifest_rows")], ["tasks", ", ".join(plan.get("tasks", []))],
            ["row x task pairs written this run", s.get("written_this_run")],
            ["row x task pairs per second", s.get("pairs_per_s")], ["output tokens per second", s.get("output_tokens_per_s")],
            ["prompt tokens per second", s.get("prompt_tokens_per_s")], ["tiles per second", s.get("tiles_per_s")],
            *[[f"time in {k} (summed over rows)", f"{v / 1000:,.1f} s ({v / spent:.0%})"] for k, v in stage_ms.items()],
            ["engine occupancy", engine.get("occupancy")], ["engine failures", engine.get("failures")],
            ["retries: media fetches", c.get("fetch_retries", 0)], ["retries: storage I/O", c.get("storage_retries", 0)],
            ["duplicate ids", s.get("duplicate_ids")],
        ]  # fmt: skip
        rows += [[f"status {k}", v] for k, v in sorted(s.get("status_counts", {}).items())]
    for task, (cut, ok) in data.cut_by_max_tokens.items():
        rows.append([f"answers cut by max_tokens: {task}", f"{cut} of {ok} ok ({cut / max(ok, 1):.0%})"])
    rows.append(["shards done (ledger)", data.shards_done])
    return rows


_CSS = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}th{background:#f3f3f3}.note{color:#666}
section{margin-bottom:2em}svg{max-width:100%;height:auto}.status{color:#fff;padding:0 4px;border-radius:3px}"""


def _status_cell(status: str) -> Markup:
    return Markup(f'<span class="status" style="background:{status_color(status)}">{html.escape(status)}</span>')


def render_html(data: ReportData) -> str:
    e = html.escape
    status_rows = [
        [t, _status_cell(s), n] for t, by in sorted(data.status_by_task.items()) for s, n in sorted(by.items())
    ]
    sample_note = (f"{data.files_read} of {data.part_files} part files read (evenly spread), {data.rows_read} rows"
                   if data.sampled else f"all {data.part_files} part files read, {data.rows_read} rows")  # fmt: skip
    kinds = _table(["status", "rows", "error (what names one item replaced)"],
                   [[_status_cell(st), n, kind] for st, kind, n in data.error_kinds])  # fmt: skip
    samples = "".join(
        f"<h3>{_status_cell(status)}</h3>"
        + _table(["id", "task", "error"], [[r["id"], r["task"], r["error"]] for r in items])
        for status, items in sorted(data.errors.items())
    )
    errors = (
        f"<h3>the most frequent errors</h3>{kinds}<h3>samples per status</h3>{samples}"
        if samples
        else "<p>no failed rows</p>"
    )
    runs = [[run, _utc(s[0]["time"] - s[0]["t"]), s[-1]["t"], s[-1]["rows"], len(s)]
            for run, s in sorted(data.timeline.items()) if s]  # fmt: skip
    body = {
        "summary": ("Summary", _table(["", "value"], _summary(data), "kv")),
        "throughput": ("Throughput over time", _svg(plot_throughput, data)),
        "status": ("Status breakdown", f'<p class="note">source: {e(data.status_source)}</p>'
                   + _table(["task", "status", "rows"], status_rows) + _svg(plot_status, data)),
        "tiles": ("Tiles per row", f'<p class="note">{e(sample_note)}; rows of task {e(data.first_task or "-")}, '
                  "with tiles</p>" + _svg(plot_tiles, data)
                  + _table(["tiles", "rows"], [[int(t), int(data.tiles[t])] for t in np.nonzero(data.tiles)[0]])),
        "prompt-tokens": ("Prompt tokens per row", f'<p class="note">{e(sample_note)}; ok rows, every task</p>'
                          + _svg(plot_prompt_tokens, data)
                          + _table(["rows", "mean", "p50", "p95", "max"], [_quantiles(data.prompt_tokens)])),
        "slowest": ("Slowest rows (preprocess + engine ms)", f'<p class="note">{e(sample_note)}</p>' + _table(
            ["id", "task", "status", "tiles", "preprocess_ms", "engine_ms", "total_ms"],
            [[r["id"], r["task"], r["status"], r["num_tiles"], r["preprocess_ms"], r["engine_ms"], r["total_ms"]]
             for r in data.slowest])),
        "errors": ("Errors: counts by message and samples", f'<p class="note">{e(sample_note)}</p>' + errors),
        "runs": ("Runs (timelines)", _table(["run_id", "started (UTC)", "duration_s", "rows x tasks", "samples"],
                                            runs)),
    }  # fmt: skip
    sections = "".join(
        f'<section id="{sid}"><h2>{e(title)}</h2>{content}</section>' for sid, (title, content) in body.items()
    )
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>internvl-batch report: {e(data.url)}</title>'
            f"<style>{_CSS}</style></head><body><h1>internvl-batch run report</h1><p>{e(data.url)}</p>{sections}"
            "</body></html>")  # fmt: skip


def write_report(out: OutputDir, success: dict[str, Any] | None = None, dest: OutputDir | None = None) -> str:
    """Render the report of `out` and write it under `dest` (default: `out`, beside
    `_SUCCESS`); returns the HTML file's path."""
    data = collect(out, success)
    dest = dest or out
    page, png = render_html(data), render_png(data)
    dest.write_atomic(REPORT_PNG, png)
    return dest.write_atomic(REPORT_HTML, page.encode())
