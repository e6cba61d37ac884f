"""benchmarks/common.py: the rotated order, the answers check that fails the benchmark, the
median/spread lines (no vLLM, no Ray: a benchmark's driver loop as a subprocess)."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np

from benchmarks import common

# A benchmark in miniature: two sides through run_rotated, answers compared every run,
# one figure emitted, the exit code from the check. Side b answers differently on the
# rows named in argv[2], in run argv[1] only (-1: never).
_BENCH = textwrap.dedent(
    """
    import sys
    from benchmarks import common

    bad_run, bad_rows = int(sys.argv[1]), sys.argv[2].split(",") if sys.argv[2] else []
    rows = [f"r{i}" for i in range(6)]
    check = common.AnswerCheck()

    def side(name):
        def call(run):
            wrong = name == "b" and run == bad_run
            return {r: ("WRONG" if wrong and r in bad_rows else f"answer {r}") for r in rows}
        return call

    def after_run(run, this):
        check.compare(f"answers, run {run + 1}", "a", this["a"], "b", this["b"])

    res = common.run_rotated({"a": side("a"), "b": side("b")}, 3, after_run=after_run)
    common.emit("rows answered", [len(r) for r in res["a"]], "rows", ".0f")
    sys.exit(check.exit_code())
    """
)


def _run_bench(tmp_path, bad_run: int, bad_rows: str) -> subprocess.CompletedProcess:
    script = tmp_path / "bench.py"
    script.write_text(_BENCH)
    return subprocess.run(
        [sys.executable, str(script), str(bad_run), bad_rows],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=common.REPO,
        env={"PYTHONPATH": str(common.REPO), "PATH": "/usr/bin:/bin"},
    )


def test_an_answer_mismatch_exits_nonzero_naming_the_rows(tmp_path):
    proc = _run_bench(tmp_path, bad_run=1, bad_rows="r2,r5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "ANSWERS DIFFER answers, run 2: b vs a: 2 of 6 rows: r2, r5" in lines
    # The other runs still ran and their figures printed: the failure is reported at the end.
    assert "run 3/3: a -> b" in lines
    assert any(line.startswith("BENCH ") for line in lines)
    assert lines[-1] == "  ANSWERS DIFFER answers, run 2: b vs a: 2 of 6 rows: r2, r5"


def test_equal_answers_exit_zero(tmp_path):
    proc = _run_bench(tmp_path, bad_run=-1, bad_rows="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "answers: equal in all 3 comparison(s)" in proc.stdout
    assert "ANSWERS DIFFER" not in proc.stdout


def test_rotation_alternates_which_side_runs_first():
    assert [common.rotated(["a", "b"], run) for run in range(4)] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
    # Three sides: each goes first once in three runs, and the cyclic order is kept.
    assert [common.rotated(["a", "b", "c"], run) for run in range(3)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
    ]


def test_run_rotated_calls_sides_in_the_rotated_order_and_returns_them_by_side(capsys):
    calls = []

    def side(name):
        def call(run):
            calls.append((run, name))
            return f"{name}{run}"

        return call

    seen = []
    out = common.run_rotated({"x": side("x"), "y": side("y")}, 3, after_run=lambda run, this: seen.append(this))
    assert calls == [(0, "x"), (0, "y"), (1, "y"), (1, "x"), (2, "x"), (2, "y")]
    assert out == {"x": ["x0", "x1", "x2"], "y": ["y0", "y1", "y2"]}
    assert seen[1] == {"y": "y1", "x": "x1"}
    assert "run 2/3: y -> x" in capsys.readouterr().out


def test_a_missing_or_extra_row_is_a_difference():
    assert common.differing_rows({"a": 1, "b": 2, "c": 3}, {"a": 1, "c": 4, "d": 5}) == ["b", "c", "d"]
    assert common.differing_rows({"a": (1, 2)}, {"a": (1, 2)}) == []


def test_failed_side_fails_the_check(capsys):
    check = common.AnswerCheck()
    check.failed("run 1: the job side crashed")
    assert check.exit_code() == 1
    assert "FAILED run 1: the job side crashed" in capsys.readouterr().out


def test_tensor_rows_name_the_tiles_that_differ():
    ref = np.zeros((4, 2, 2, 3), np.uint8)
    ours = ref.copy()
    ours[3, 1, 1, 2] = 1
    check = common.AnswerCheck()
    assert check.compare("tiles", "card", common.tensor_rows(ref), "ours", common.tensor_rows(ours)) == ["tile 3"]
    # A different tile count is a difference too (the shape, the extra tile).
    assert check.compare("tiles", "card", common.tensor_rows(ref), "ours", common.tensor_rows(ref[:3])) == [
        "tile 3",
        "shape",
    ]


def test_emit_prints_median_spread_and_a_bench_line(capsys):
    s = common.emit("front-end CPU ms/image", [12.0, None, 9.0, math.nan, 10.0], "ms", ".1f")
    assert (s.median, s.lo, s.hi, s.n) == (10.0, 9.0, 12.0, 3)
    out = capsys.readouterr().out
    assert "front-end CPU ms/image: 10.0 (9.0-12.0) ms, n=3" in out
    (record,) = common.parse_bench_lines(out)
    assert record["metric"] == "front-end CPU ms/image" and record["values"] == [12.0, 9.0, 10.0]
    assert json.loads(json.dumps(record)) == record


def test_ratios_pair_runs_and_skip_crashed_ones():
    assert common.ratios([2.0, None, 9.0], [1.0, 3.0, 3.0]) == [2.0, None, 3.0]
