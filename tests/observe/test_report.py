"""The run report, opened as a reader would (no screenshots): its sections hold what
`_SUCCESS` and the parquet output say, for a finished run and for one still going."""

import html.parser
import io
import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from internvl_batch.cli import main
from internvl_batch.job.output import OutputDir
from internvl_batch.observe.report import REPORT_HTML, REPORT_PNG, SECTIONS, render_html
from internvl_batch.observe.report_data import collect, error_kind

pytestmark = pytest.mark.slow  # the job behind it runs on a Ray cluster


class _Page(html.parser.HTMLParser):
    """Each section's tables (rows of cell texts), sub-headings and SVG count."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._section = self._cell = self._h3 = None
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "section":
            self._section = self.sections.setdefault(dict(attrs)["id"], {"tables": [], "h3": [], "svg": 0})
        elif self._section is None:
            return
        elif tag == "h3":
            self._h3 = []
        elif tag == "table":
            self._section["tables"].append([])
        elif tag == "tr":
            self._section["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "svg":
            self._section["svg"] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._section["tables"][-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "h3" and self._h3 is not None:
            self._section["h3"].append("".join(self._h3))
            self._h3 = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._h3 is not None:
            self._h3.append(data)


def _body(table):
    return table[1:]  # without the header row


def _check_against_output(page: _Page, out, success: dict | None):
    """The sections that read the parts agree with the parquet output read independently."""
    table = pq.read_table(out)
    tiles_section = page.sections["tiles"]["tables"][0]
    caption = table.filter(pc.and_(pc.equal(table["task"], "caption"), pc.greater(table["num_tiles"], 0)))
    want = {t: n for t, n in zip(*np.unique(caption["num_tiles"].to_numpy(), return_counts=True))}
    assert {int(t): int(n) for t, n in _body(tiles_section)} == want

    ok = table.filter(pc.equal(table["status"], "ok"))["num_prompt_tokens"].to_numpy()
    rows, mean, p50, p95, top = _body(page.sections["prompt-tokens"]["tables"][0])[0]
    assert (int(rows), float(mean.replace(",", "")), int(p50), int(p95), int(top)) == (
        len(ok), pytest.approx(ok.mean(), abs=0.01), int(np.percentile(ok, 50, method="inverted_cdf")),
        int(np.percentile(ok, 95, method="inverted_cdf")), int(ok.max()),
    )  # fmt: skip

    slowest = _body(page.sections["slowest"]["tables"][0])
    totals = [float(r[-1].replace(",", "")) for r in slowest]
    by_key = {(r["id"], r["task"]): r for r in table.to_pylist()}
    all_totals = sorted(((r["preprocess_ms"] or 0) + (r["engine_ms"] or 0) for r in by_key.values()), reverse=True)
    assert totals == pytest.approx(all_totals[: len(totals)], abs=0.01) and len(totals) == 10
    for id_, task, status, *_ in slowest:
        assert by_key[(id_, task)]["status"] == status

    failed = {s for s in pc.unique(table["status"]).to_pylist() if s != "ok"}
    headings, tables = page.sections["errors"]["h3"], page.sections["errors"]["tables"]
    assert headings[:2] == ["the most frequent errors", "samples per status"] and set(headings[2:]) == failed
    for (id_, task, error), status in [(r, s) for s, t in zip(headings[2:], tables[1:]) for r in _body(t)]:
        assert by_key[(id_, task)]["status"] == status and by_key[(id_, task)]["error"] == error
    # Counts by message: each group's rows, counted again from the output with the same grouping.
    kinds = Counter((r["status"], error_kind(r["error"])) for r in by_key.values() if r["status"] != "ok")
    shown = [(status, int(n), kind) for status, n, kind in _body(tables[0])]
    assert shown == [(st, n, k) for (st, k), n in kinds.most_common(len(shown))] and len(shown) == min(10, len(kinds))
    # Answers cut by max_tokens, per task, from the output's finish_reason.
    summary = dict(_body(page.sections["summary"]["tables"][0]))
    for task in pc.unique(table["task"]).to_pylist():
        mine = table.filter(pc.and_(pc.equal(table["task"], task), pc.equal(table["status"], "ok")))
        cut = pc.sum(pc.equal(mine["finish_reason"], "length")).as_py() or 0
        assert summary[f"answers cut by max_tokens: {task}"].startswith(f"{cut} of {mine.num_rows} ok")


def test_finished_run_report_matches_success_and_output(observed_job):
    out = observed_job.out
    success = json.loads((out / "_SUCCESS").read_text())
    page = _Page((out / REPORT_HTML).read_text())
    assert list(page.sections) == list(SECTIONS)
    assert not page.tags & {"script", "link", "iframe"}  # self-contained: one file, nothing fetched

    summary = dict(_body(page.sections["summary"]["tables"][0]))
    assert summary["state"] == "finished" and summary["run_id"] == success["run_id"]
    assert summary["row x task pairs written this run"] == str(success["written_this_run"])
    assert summary["model"] == success["resources"]["model"] and summary["replicas x GPUs per replica"] == "1 x 0"
    assert summary["started (UTC)"] == success["started_at"] and summary["ended (UTC)"] == success["ended_at"]
    assert success["started_at"] < success["ended_at"] and summary["GPU-hours (reserved)"] == "0.00"
    assert summary["retries: media fetches"] == str(success["counters"]["fetch_retries"]) != "0"  # the flaky server
    split = {k: v for k, v in summary.items() if k.startswith("time in ")}
    assert set(split) == {f"time in {k} (summed over rows)" for k in success["stage_ms"]} and len(split) == 2
    assert {k.removeprefix("status "): int(v) for k, v in summary.items() if k.startswith("status ")} == success[
        "status_counts"
    ]
    status_rows = _body(page.sections["status"]["tables"][0])
    per_status: dict[str, int] = {}
    for _, status, n in status_rows:
        per_status[status] = per_status.get(status, 0) + int(n)
    assert per_status == success["status_counts"]
    assert set(per_status) >= {"ok", "fetch_error", "decode_error", "invalid_row", "engine_error"}

    # The throughput plot is drawn from this run's timeline, whose last sample is the run's end.
    runs = _body(page.sections["runs"]["tables"][0])
    assert [r[0] for r in runs] == [success["run_id"]] and int(runs[0][3]) == success["written_this_run"]
    assert page.sections["throughput"]["svg"] == 1 and "<svg" in (out / REPORT_HTML).read_text()
    _check_against_output(page, out, success)

    png = Image.open(io.BytesIO((out / REPORT_PNG).read_bytes()))
    assert png.format == "PNG" and png.size[0] > 800
    assert pq.read_table(out).num_rows == sum(success["status_counts"].values())  # readers skip the report


def test_report_of_a_run_in_progress(observed_job, tmp_path, capsys):
    """A run still going: no _SUCCESS, a shard without its ledger entry. The command renders
    it from the path alone; the status section counts the done shards only."""
    copy = tmp_path / "out"
    shutil.copytree(observed_job.out, copy)
    for name in ("_SUCCESS", REPORT_HTML, REPORT_PNG):
        (copy / name).unlink()
    entries = sorted((copy / "_ledger").glob("*.json"))
    entries[0].unlink()
    done = [json.loads(p.read_text()) for p in entries[1:]]

    assert main(["report", str(copy), "--out", str(tmp_path / "elsewhere")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "elsewhere" / REPORT_HTML)
    assert not (copy / REPORT_HTML).exists()
    page = _Page((tmp_path / "elsewhere" / REPORT_HTML).read_text())
    assert dict(_body(page.sections["summary"]["tables"][0]))["state"].startswith("in progress")
    want: dict[tuple[str, str], int] = {}
    for entry in done:
        for task, by in entry["counts"].items():
            for status, n in by.items():
                want[(task, status)] = want.get((task, status), 0) + n
    got = {(t, s): int(n) for t, s, n in _body(page.sections["status"]["tables"][0])}
    assert got == want
    _check_against_output(page, copy, None)

    assert main(["report", str(copy)]) == 0  # beside the output's parts by default
    assert (copy / REPORT_HTML).exists() and (copy / REPORT_PNG).exists()


def test_report_reads_a_bounded_sample_of_parts(observed_job):
    out = OutputDir(str(observed_job.out))
    data = collect(out, max_files=2)
    assert data.files_read == 2 and data.part_files > 2
    assert 0 < data.rows_read < pq.read_table(observed_job.out).num_rows
    assert "2 of" in render_html(data)
