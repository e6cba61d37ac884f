"""The report's charts, drawn from hand-made data: colours by status, every series visible,
axes labelled with units, no start-up samples."""

import colorsys

from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from internvl_batch.observe.report import STATUS_COLORS, plot_status, plot_throughput, status_color
from internvl_batch.observe.report_data import ReportData
from internvl_batch.status import Status


def _hue_deg(color: str) -> float:
    return colorsys.rgb_to_hsv(*to_rgb(color))[0] * 360


def test_ok_is_green_and_every_failure_warm():
    assert set(STATUS_COLORS) == {s.value for s in Status}
    assert 90 <= _hue_deg(status_color("ok")) <= 150
    for status in Status:
        if status != Status.OK:
            hue = _hue_deg(status_color(status.value))
            assert hue <= 60 or hue >= 300, (status, hue)  # reds, oranges, browns, yellows, pinks
    assert status_color("a_status_from_a_newer_version") not in STATUS_COLORS.values()


def _timeline():
    # 3 samples of start-up with nothing done, then work; cumulative counts, t in seconds.
    samples = [{"t": t, "rows": 0, "stages": {}} for t in (0, 10, 20)]
    samples += [{"t": 20 + 10 * i, "rows": 20 * i, "stages": {"read": 50 * i, "prepare": 30 * i, "inference": 20 * i}}
                for i in range(1, 5)]  # fmt: skip
    return {"r1": samples}


def test_throughput_lines_are_all_visible_start_at_the_work_and_say_their_units():
    data = ReportData("out", {"run_id": "r1"}, timeline=_timeline())
    ax = Figure().add_subplot()
    plot_throughput(ax, data)
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"read (rows)", "prepare (rows)", "inference (rows x tasks)", "output (rows x tasks)"}
    inference, output = lines["inference (rows x tasks)"], lines["output (rows x tasks)"]
    assert list(inference.get_ydata()) == list(output.get_ydata())  # the same values ...
    assert output.get_zorder() > inference.get_zorder() and output.get_linewidth() < inference.get_linewidth()
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.lines}
    assert len(styles) == 4  # ... yet each line can be told apart
    assert min(output.get_xdata()) == 30  # the first interval with work; start-up samples are left out
    assert "seconds" in ax.get_xlabel() and "per second" in ax.get_ylabel()


def test_status_bars_use_the_status_colours_and_label_their_axes():
    data = ReportData("out", None, status_by_task={"caption": {"ok": 5, "fetch_error": 2}})
    ax = Figure().add_subplot()
    plot_status(ax, data)
    colours = {bars.get_label(): bars.patches[0].get_facecolor()[:3] for bars in ax.containers}
    assert colours["ok"] == to_rgb(STATUS_COLORS["ok"]) and colours["fetch_error"] == to_rgb(
        STATUS_COLORS["fetch_error"]
    )
    assert ax.get_xlabel() and "rows" in ax.get_ylabel()
