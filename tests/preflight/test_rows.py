"""The per-row check `validate` and `plan` share (preflight/rows.py): a row's media are read
to their headers, not only looked up, and every refusal says why. No model: token estimate."""

import json

from internvl_batch.devtools.sample_media import sample_image
from internvl_batch.preflight.rows import check_sample
from tests.observe import jobs


def _config(tmp_path, rows, **sections):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return jobs.job_config(path, tmp_path / "out", str(tmp_path / "no-model"), **sections)


def test_media_are_checked_to_their_headers_and_every_refusal_says_why(tmp_path):
    good, fake, missing = tmp_path / "good.png", tmp_path / "fake.jpg", tmp_path / "missing.jpg"
    sample_image(seed=0, size=(300, 300)).save(good)
    fake.write_bytes(b"\xff\xd8 not really a jpeg")  # exists: the old URL-only check said "ok"
    rows = [{"id": "good", "image": str(good), "question": "q"},
            {"id": "fake", "image": str(fake), "question": "q"},
            {"id": "gone", "image": [str(good), str(missing)], "question": "q"},
            {"id": "bad", "question": "q"}] + [{"id": f"extra{i}", "image": str(good)} for i in range(5)]  # fmt: skip
    check = check_sample(_config(tmp_path, rows), 4)
    assert [(p.id, p.status) for p in check.plans] == [
        ("good", {"caption": "ok", "qa": "ok"}),
        ("fake", {"caption": "decode_error", "qa": "decode_error"}),
        ("gone", {"caption": "fetch_error", "qa": "fetch_error"}),
        ("bad", {"caption": "invalid_row", "qa": "invalid_row"}),
    ]  # the first 4 rows only
    lines = check.text().splitlines()
    assert lines[0].startswith("manifest: 4 sampled row(s), the first of 1 file(s)") and len(lines) == 6
    assert lines[1] == "  good: ok"
    assert lines[2].startswith(f"  fake: decode_error: {fake}: no image header")
    assert lines[3].startswith("  gone: fetch_error: ") and str(missing) in lines[3]
    assert lines[4].startswith("  bad: invalid_row: no 'image' or 'video'")
    assert lines[5] == "predicted status (row x task): ok 2, decode_error 2, fetch_error 2, invalid_row 2"
    assert check.strict_error().startswith("--strict: 3 of 4 sampled row(s) predicted refused (")
    assert check_sample(_config(tmp_path, rows[:1]), 4).strict_error() is None


def test_the_jobs_fetch_and_decode_limits_apply(tmp_path):
    image = tmp_path / "big.png"
    sample_image(seed=1, size=(600, 600)).save(image)
    rows = [{"id": "big", "image": str(image), "question": "q"}]
    small_fetch = check_sample(_config(tmp_path, rows, preprocess={"fetch": {"max_bytes": 100}}), 1).plans[0]
    assert small_fetch.status["caption"] == "too_large" and "max_bytes" in small_fetch.error
    few_pixels = check_sample(_config(tmp_path, rows, preprocess={"decode": {"max_pixels": 1000}}), 1).plans[0]
    assert few_pixels.status["caption"] == "too_large" and "max_pixels" in few_pixels.error
