"""`internvl-rayjob` (internvl_batch/job/rayjob.py), run for real through /bin/sh: validate first and stop
on exit 2, retry only what may pass, on the same cluster; {night} resolved once to an explicit UTC date."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from tests.k8s.entrypoint_run import entrypoint_line, run_entrypoint

pytestmark = pytest.mark.skipif(
    not (shutil.which("sh") and shutil.which("date") and shutil.which("sed")), reason="needs sh, date and sed"
)
CONFIG = "/etc/internvl-batch/job.yaml"


def test_a_problem_that_will_repeat_fails_before_anything_runs(tmp_path, image_files):
    ran = run_entrypoint(entrypoint_line(CONFIG), tmp_path, image_files, {"validate": "2"})
    assert ran.code == 2
    assert ran.calls == [["validate", CONFIG]], "no run (no GPU demand) after validate says exit 2"


def test_a_failing_run_is_retried_on_the_same_cluster_and_resumes(tmp_path, image_files):
    ran = run_entrypoint(entrypoint_line(CONFIG), tmp_path, image_files, {"run": "1 1 0"})
    assert ran.code == 0
    assert [c[0] for c in ran.calls] == ["validate", "run", "run", "run"]
    assert "attempt 2 of 3" in ran.stderr


def test_retries_stop_at_the_limit_and_never_follow_exit_2(tmp_path, image_files):
    ran = run_entrypoint(entrypoint_line(CONFIG), tmp_path, image_files, {"run": "1"})
    assert (ran.code, [c[0] for c in ran.calls]) == (1, ["validate", "run", "run", "run"])
    ran = run_entrypoint(entrypoint_line(CONFIG), tmp_path, image_files, {"run": "1 2 0"})
    assert (ran.code, [c[0] for c in ran.calls]) == (2, ["validate", "run", "run"])


def test_a_validation_that_could_not_finish_is_tried_again(tmp_path, image_files):
    ran = run_entrypoint(entrypoint_line(CONFIG), tmp_path, image_files, {"validate": "1 0"})
    assert (ran.code, [c[0] for c in ran.calls]) == (0, ["validate", "validate", "run"])


def test_days_ago_names_one_utc_night_for_every_step(tmp_path, image_files):
    sets = ["--set", "input.path=s3://b/manifests/{night}/", "--set", "output.path=s3://b/c/{night}"]
    ran = run_entrypoint(entrypoint_line("--days-ago", "1", CONFIG, *sets), tmp_path, image_files, {"run": "1 0"})
    today = dt.datetime.now(dt.UTC).date()
    nights = {(today - dt.timedelta(days=d)).isoformat() for d in (1, 2)}  # 2: the clock crossed midnight
    validate, *runs = ran.calls
    night = validate[3].removeprefix("input.path=s3://b/manifests/").rstrip("/")
    assert night in nights
    assert validate[1:] == [CONFIG, *(a.replace("{night}", night) for a in sets)]
    assert [r[1:] for r in runs] == [validate[1:]] * 2, "a retry keeps its night"


def test_night_reruns_a_given_date_and_keeps_arguments_whole(tmp_path, image_files):
    line = entrypoint_line("--night", "2026-05-01", CONFIG, "--set", "output.path=s3://b/c/{night} x&y")
    ran = run_entrypoint(line, tmp_path, image_files)
    assert ran.code == 0
    assert ran.calls[1] == ["run", CONFIG, "--set", "output.path=s3://b/c/2026-05-01 x&y"]


@pytest.mark.parametrize(
    "args",
    [
        ("--days-ago", "yesterday", CONFIG, "--set", "input.path=s3://b/{night}/"),
        ("--night", "2026-02-30", CONFIG, "--set", "input.path=s3://b/{night}/"),
        ("--night", "1.5.2026", CONFIG, "--set", "input.path=s3://b/{night}/"),
        (CONFIG, "--set", "input.path=s3://b/{night}/"),  # {night} without a date
        ("--days-ago", "1", CONFIG),  # a date nothing uses: a typo in the --set values
        (),
    ],
)
def test_a_bad_night_or_usage_fails_before_validate(args, tmp_path, image_files):
    ran = run_entrypoint(entrypoint_line(*args), tmp_path, image_files)
    assert ran.code == 2 and ran.calls == [], ran.stderr
    assert "internvl-rayjob:" in ran.stderr
