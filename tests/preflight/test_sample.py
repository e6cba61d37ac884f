"""Which rows `validate` and `plan` look at (preflight/sample.py): the same rows whether the
whole manifest was counted (plan) or only the sampled files were asked (validate), and a
repeated id within them marked as the job marks it."""

import json

from internvl_batch.job.readers import list_files
from internvl_batch.preflight.sample import SAMPLE_FILES, count_rows, sample_rows
from tests.observe import jobs


def test_validate_and_plan_sample_the_same_rows_and_mark_repeated_ids(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    for f in range(SAMPLE_FILES + 3):  # more files than are sampled: spread over them
        rows = [{"id": f"{f}-{i}", "image": "x.jpg"} for i in range(4)]
        if f == 5:
            rows[1]["id"] = "0-0"  # the first file's first id, again
        (root / f"part-{f:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "part-99.jsonl").write_text("")  # empty: never chosen
    cfg = jobs.job_config(root, tmp_path / "out")
    fs, files = list_files(cfg.input)
    planned, planned_files = sample_rows(cfg, fs, files, 20, count_rows(cfg, fs, files)[2])
    validated, validated_files = sample_rows(cfg, fs, files, 20)
    assert [r.id for r in validated] == [r.id for r in planned] and validated_files == planned_files == SAMPLE_FILES
    assert len(planned) == 20 and planned[0].id == "0-0" and "part-99" not in str([r.id for r in planned])
    [dup] = [r for r in planned if r.error]
    assert dup.id == f"0-0#dup@{root}/part-05.jsonl#2" and dup.error.startswith("duplicate id '0-0'")
