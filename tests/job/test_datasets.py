"""Datasets as they come, through the real job (a local Ray cluster, real readers, the real
prepare stage, the real sink and ledger; output read back with pyarrow): WebDataset tars
and HF-style parquet, locally and on the S3 test server; resume after a kill mid-tar; a
changed tar; an OpenAI batch file round trip. The engine is the stand-in echo stage
(tests/support/stages.py) except in the one test about the engine: a templated prompt and
`n: 3` through real vLLM (CPU), and embedded bytes answered exactly as the same image fetched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from internvl_batch.config import JobConfig
from internvl_batch.devtools.hf_engine import on_hf_engine
from internvl_batch.devtools.sample_media import write_sample_video
from internvl_batch.job.openai_output import FOLDER
from internvl_batch.job.plan import PlanError
from internvl_batch.job.runner import run_job
from tests.support import stages as stand_in
from tests.support.datasets import batch_line, data_uri, image_bytes, sample_members, write_hf_parquet, write_tar

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ECHO = {"inference": stand_in.EchoInference}  # the real prepare stage, a stand-in engine


@pytest.fixture(scope="module")
def ray_cluster():
    import cloudpickle
    import ray

    cloudpickle.register_pickle_by_value(stand_in)
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _job(manifest, out, *, storage=None, tasks=None, **sections):
    job = {
        "input": {"path": str(manifest), "storage_options": storage or {}, "shard_rows": 3},
        "model": {"path": "unused-model"},
        "preprocess": {"max_num": 2, "multi_image_max_num": 2, "video": {"num_segments": 2},
                       "fetch": {"storage_options": {"s3": storage}} if storage else {}},
        "task": tasks or [{"name": "caption", "preset": "short_caption"}, {"name": "qa", "use_row_question": True}],
        "runtime": {"use_gpu": False, "cpu_workers": 2, "cpus_per_worker": 0.5, "engine_cpus": 0.5, "readers": 1,
                    "preprocess_batch_size": 2, "engine_batch_size": 4, "progress_interval_s": 5,
                    "stall_timeout_s": 300},
        "output": {"path": str(out), "storage_options": storage or {}, "rows_per_file": 4, "flush_interval_s": 1},
    }  # fmt: skip
    for k, v in sections.items():
        job[k] = {**job.get(k, {}), **v}
    return job


def _output(out, storage=None) -> list[dict]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(out), **(storage or {}))
    return pq.read_table(fs.glob(f"{root}/part-*.parquet"), filesystem=fs).to_pylist()


def _once(rows, tasks=("caption", "qa")) -> dict[tuple[str, str], dict]:
    keys = Counter((r["id"], r["task"]) for r in rows)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    assert {t for _, t in keys} == set(tasks)
    return {(r["id"], r["task"]): r for r in rows}


def _wds(root: Path) -> dict[str, str]:
    """Tars of real images, a real video, json metadata, broken samples and a truncated tar;
    returns the caption task's expected status per sample id."""
    video = write_sample_video(root / "clip.mp4", frames=24).read_bytes()
    good = [m for i in range(5) for m in sample_members(f"{i:04d}", image_bytes(i, (200 + 40 * i, 160), "JPEG"),
                                                          caption=f"c{i}", question=f"Q{i}?")]  # fmt: skip
    write_tar(root / "wds" / "00000.tar", good)
    write_tar(root / "wds" / "00001.tar", [
        ("v.mp4", video), ("v.json", json.dumps({"question": "What moves?", "start": 0.2, "end": 1.5}).encode()),
        ("bad.jpg", b"\xff\xd8 not a jpeg"), ("bad.json", b'{"question": "Q?"}'),
        ("empty.json", b'{"question": "Q?"}'),
        ("two.jpg", image_bytes(7, fmt="JPEG")), ("two.png", image_bytes(8)),
        ("png.png", image_bytes(9, (100, 300))),
    ])  # fmt: skip
    last = image_bytes(22, fmt="JPEG")
    full = write_tar(root / "wds" / "00002.tar", [m for i in range(3) for m in sample_members(
        f"t{i}", image_bytes(20 + i, fmt="JPEG") if i < 2 else last)]).read_bytes()  # fmt: skip
    (root / "wds" / "00002.tar").write_bytes(full[: full.index(last) + 500])  # inside t2's image
    expected = {f"00000.tar#{i:04d}": "ok" for i in range(5)}
    expected.update({"00001.tar#v": "ok", "00001.tar#bad": "decode_error", "00001.tar#empty": "invalid_row",
                     "00001.tar#two": "invalid_row", "00001.tar#png": "ok", "00002.tar#t0": "ok",
                     "00002.tar#t1": "ok", "00002.tar#t2": "invalid_row"})  # fmt: skip
    return expected


def test_webdataset_every_sample_once_then_a_changed_tar(tmp_path, ray_cluster):
    expected = _wds(tmp_path)
    job = _job(tmp_path / "wds", tmp_path / "out")
    summary = run_job(JobConfig.model_validate(job), stages=ECHO)
    assert summary.finished and summary.plan["shards"]["total"] == 2 + 2 + 1
    got = _once(_output(tmp_path / "out"))
    assert {rid for rid, _ in got} == set(expected)
    assert {rid: got[(rid, "caption")]["status"] for rid in expected} == expected
    assert got[("00001.tar#v", "caption")]["media"] == "video"
    assert "00001.tar#bad.jpg" in got[("00001.tar#bad", "caption")]["error"]  # named after its member
    assert "'t2.jpg'" in got[("00002.tar#t2", "qa")]["error"] and got[("00000.tar#0001", "qa")]["status"] == "ok"
    assert got[("00001.tar#empty", "qa")]["error"] == "no 'image' or 'video'"

    tar = tmp_path / "wds" / "00000.tar"
    data = bytearray(tar.read_bytes())
    data[data.rindex(b"c4")] = ord("C")  # the caption of the last sample: shard 1 of that tar changed
    tar.write_bytes(bytes(data))
    with pytest.raises(PlanError, match=r"shard .*-000001 .*00000.tar \(rows 3-4\)"):
        run_job(JobConfig.model_validate(job), stages=ECHO)
    job["input"]["on_change"] = "redo"
    redone = run_job(JobConfig.model_validate(job), stages=ECHO)
    assert redone.finished and redone.plan["shards"]["redo"] == 1 and redone.written_this_run == 2 * 2
    _once(_output(tmp_path / "out"))


def test_killed_mid_tar_resumes_writing_nothing_twice(tmp_path, ray_cluster):
    members = [m for i in range(150) for m in sample_members(f"{i:04d}", b"bytes of %d" % i, question="Q?")]
    write_tar(tmp_path / "big.tar", members)
    out = tmp_path / "out"
    job = _job(tmp_path / "big.tar", out, input={"shard_rows": 30},
               runtime={"engine_batch_size": 3, "preprocess_batch_size": 1, "engine_batches_in_flight": 1,
                        "advanced": {"block_kib": 4}}, output={"rows_per_file": 6, "flush_interval_s": 0.2})  # fmt: skip
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "INTERNVL_TEST_DELAY_S": "1.0"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.stages", str(cfg_path)], cwd=REPO, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the first parts of the tar are in, the rest is not
    finally:
        proc.wait(timeout=60)
    killed = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert len(list(out.glob("_ledger/*.json"))) < 5 and not (out / "_SUCCESS").exists()
    resumed = run_job(JobConfig.model_validate(job), stages=stand_in.STAGES)
    assert resumed.finished and resumed.plan["shards"]["done"] < 5
    assert resumed.written_this_run == 300 - sum(pq.read_metadata(out / n).num_rows for n in killed)
    assert all((out / n).read_bytes() == data for n, data in killed.items())  # nothing rewritten
    got = _once(_output(out))
    assert {rid for rid, _ in got} == {f"big.tar#{i:04d}" for i in range(150)}


def test_hf_parquet_and_tars_on_s3(s3, tmp_path, ray_cluster):
    storage = s3.create_bucket("datasets-e2e")
    fetched = s3.put_object("datasets-e2e", "media/f.png", image_bytes(3, (300, 200)))
    rows = [{"id": "bytes", "image": {"bytes": image_bytes(1, (640, 480)), "path": "a.png"}},
            {"id": "path", "image": {"bytes": None, "path": fetched}},
            {"id": "gone", "image": {"bytes": None, "path": "s3://datasets-e2e/media/nope.png"}},
            {"id": "junk", "image": {"bytes": b"junk", "path": "j.png"}}]  # fmt: skip
    local = write_hf_parquet(tmp_path / "hf.parquet", rows, row_group_size=2)
    s3.put_object("datasets-e2e", "hf/train-00000-of-00001.parquet", local.read_bytes())
    members = [m for i in range(4) for m in sample_members(f"{i}", image_bytes(i, fmt="JPEG"), question="Q?")]
    s3.put_object("datasets-e2e", "wds/a.tar", write_tar(tmp_path / "a.tar", members).read_bytes())
    tasks = [{"name": "caption", "preset": "short_caption"}]
    hf = _job("s3://datasets-e2e/hf", "s3://datasets-e2e/out-hf", storage=storage, tasks=tasks)
    assert run_job(JobConfig.model_validate(hf), stages=ECHO).finished
    got = _once(_output("s3://datasets-e2e/out-hf", storage), ("caption",))
    assert {k[0]: v["status"] for k, v in got.items()} == {"bytes": "ok", "path": "ok", "gone": "fetch_error",
                                                           "junk": "decode_error"}  # fmt: skip
    wds = _job("s3://datasets-e2e/wds/*.tar", "s3://datasets-e2e/out-wds", storage=storage, tasks=tasks)
    assert run_job(JobConfig.model_validate(wds), stages=ECHO).finished
    got = _once(_output("s3://datasets-e2e/out-wds", storage), ("caption",))
    assert sorted(k[0] for k in got) == [f"a.tar#{i}" for i in range(4)]
    assert {v["status"] for v in got.values()} == {"ok"}


def test_openai_batch_round_trip(tmp_path, ray_cluster):
    image = tmp_path / "i.png"
    image.write_bytes(image_bytes(5, (320, 200)))
    url_part = {"type": "image_url", "image_url": {"url": str(image)}}
    lines = [batch_line(f"req-{i}", [url_part, {"type": "text", "text": f"Question {i}?"}], max_tokens=4)
             for i in range(5)]  # fmt: skip
    lines.append(batch_line("req-data", [{"type": "image_url", "image_url": {"url": data_uri(image.read_bytes())}},
                                         {"type": "text", "text": "Inline?"}], system="Be brief."))  # fmt: skip
    lines.append(batch_line("req-tools", [url_part], tools=[{"type": "function"}]))
    lines.append(batch_line("req-missing", [{"type": "image_url", "image_url": {"url": str(tmp_path / "no.png")}},
                                            {"type": "text", "text": "?"}]))  # fmt: skip
    (tmp_path / "batch.jsonl").write_text("\n".join(lines) + "\n")
    job = _job(tmp_path / "batch.jsonl", tmp_path / "out", input={"format": "openai_batch"},
               output={"format": "openai_batch"})  # fmt: skip
    del job["task"]  # the one task an OpenAI batch file gets: each line's own question
    summary = run_job(JobConfig.model_validate(job), stages=ECHO)
    assert summary.finished
    answers = [
        json.loads(x) for f in sorted((tmp_path / "out" / FOLDER).glob("*.jsonl")) for x in f.read_text().splitlines()
    ]
    assert sorted(a["custom_id"] for a in answers) == sorted(json.loads(x)["custom_id"] for x in lines)
    by = {a["custom_id"]: a for a in answers}
    ok = by["req-3"]
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "echo req-3/chat"},
                                                  "finish_reason": "stop", "logprobs": None}]  # fmt: skip
    assert by["req-data"]["error"] is None
    assert by["req-tools"]["response"] is None and by["req-tools"]["error"]["code"] == "invalid_row"
    assert "body.tools not supported" in by["req-tools"]["error"]["message"]
    assert by["req-missing"]["error"]["code"] == "fetch_error"
    assert pq.read_table(tmp_path / "out").num_rows == len(lines)  # the parquet readers skip _openai_batch/


def test_templated_prompt_n3_and_embedded_bytes_as_fetched_through_a_real_engine(tiny_model_dir, tmp_path, ray_cluster):
    """One job on a real engine (the HF reference engine on the tiny checkpoint: its start
    costs seconds, vLLM's a minute; vLLM's own n is tests/engines/vllm/test_engine.py's): the
    same image embedded (HF struct bytes) and fetched (the struct's path) gives
    byte-identical greedy answers; a prompt filled in from the `label` column; a row without
    a label is invalid for that task only; `n: 3` returns three answers through the output."""
    photo = image_bytes(11, (500, 300), "JPEG")
    (tmp_path / "photo.jpg").write_bytes(photo)
    rows = [{"id": "embedded", "image": {"bytes": photo, "path": "photo.jpg"}, "label": "cat"},
            {"id": "fetched", "image": {"bytes": None, "path": str(tmp_path / "photo.jpg")}, "label": "cat"},
            {"id": "unlabelled", "image": {"bytes": photo, "path": None}, "label": None}]  # fmt: skip
    import pyarrow as pa

    write_hf_parquet(tmp_path / "m.parquet", rows, label=pa.string())
    tasks = [{"name": "ask", "prompt": "Does this image show a {label}?", "sampling": {"max_tokens": 12}},
             {"name": "many", "preset": "short_caption",
              "sampling": {"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 6}}]  # fmt: skip
    job = _job(tmp_path / "m.parquet", tmp_path / "out", tasks=tasks)
    job["model"] = {"path": str(tiny_model_dir), "dtype": "float32", "max_model_len": 4096, "max_num_seqs": 8,
                    "engine_kwargs": {"enforce_eager": True}}  # fmt: skip
    job["runtime"].update(engine_cpus=1, cpus_per_worker=0.25)
    assert run_job(on_hf_engine(JobConfig.model_validate(job))).finished
    got = _once(_output(tmp_path / "out"), ("ask", "many"))
    e, f = got[("embedded", "ask")], got[("fetched", "ask")]
    assert e["status"] == f["status"] == "ok" and e["num_tiles"] == f["num_tiles"] == 3
    assert e["response"] == f["response"] and e["num_prompt_tokens"] == f["num_prompt_tokens"]
    assert e["responses"] == [e["response"]] and e["output_token_counts"] == [e["num_output_tokens"]]
    missing = got[("unlabelled", "ask")]
    assert missing["status"] == "invalid_row" and "column 'label'" in missing["error"]
    for rid in ("embedded", "fetched", "unlabelled"):
        many = got[(rid, "many")]
        assert many["status"] == "ok" and len(many["responses"]) == 3
        assert len(many["finish_reasons"]) == 3 and len(many["output_token_counts"]) == 3
        assert many["response"] == many["responses"][0] and many["num_output_tokens"] == many["output_token_counts"][0]
