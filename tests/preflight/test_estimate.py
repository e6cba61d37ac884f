"""The pre-flight plan: header-only reads, tiles as tiling cuts them, prompt tokens as the
engine counts them, predicted statuses, row counts and the GPU-hour arithmetic. No Ray."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from decord import VideoReader
from PIL import Image

from internvl_batch.cli import main
from internvl_batch.devtools.sample_media import write_large_video, write_sample_video
from internvl_batch.engines.checkpoint import inspect_checkpoint
from internvl_batch.job.clips import fixed_clips
from internvl_batch.job.readers import list_files
from internvl_batch.media.headers import predict_tiles
from internvl_batch.model.prompts import build_prompt
from internvl_batch.preflight import sample as sampling
from internvl_batch.preflight.estimate import Rates, count_rows, make_preflight
from internvl_batch.preflight.rows import check_sample, plan_rows
from internvl_batch.preflight.sample import sample_rows
from tests.observe import jobs

# -- a whole plan --------------------------------------------------------------------------------


@pytest.fixture
def manifest(tmp_path):
    media = jobs.write_media(tmp_path / "media")
    rows = jobs.write_manifest(tmp_path / "m.jsonl", media, repeat=2)
    return tmp_path / "m.jsonl", rows


def test_plan_predicts_tiles_statuses_and_exact_prompt_tokens(manifest, tmp_path, tiny_model_dir):
    path, rows = manifest
    # max_model_len 1024: the rows of 4 tiles and more overflow
    cfg = jobs.job_config(path, tmp_path / "out", str(tiny_model_dir), model={"max_model_len": 1024})
    plan = make_preflight(cfg)
    assert plan.rows == len(rows) + 1 and plan.rows_how == "exact: counted (1 file(s))"  # + the broken line
    assert plan.sample_rows == plan.rows and plan.tokens_source.startswith("exact")

    fs, files = list_files(cfg.input)
    sample, _ = sample_rows(cfg, fs, files, 100, count_rows(cfg, fs, files)[2])
    by_id = {p.id: p for p in plan_rows(cfg, sample)}
    # tiles at max_num=6 (the pair shares it: 3 each)
    want_tiles = {"square": 1, "wide": 3, "tall": 4, "big": 7, "rotated": 3, "pair": 3 + 4, "noq": 1}
    assert {k: by_id[f"{k}-0"].tiles for k in want_tiles} == want_tiles
    assert by_id["corrupt-0"].status == {"caption": "decode_error", "qa": "decode_error"}
    assert by_id["missing-1"].status == {"caption": "fetch_error", "qa": "fetch_error"}
    assert by_id["noq-0"].status == {"caption": "ok", "qa": "invalid_row"}
    assert [p.status["caption"] for i, p in by_id.items() if i.endswith(".jsonl#19")] == ["invalid_row"]

    # Prompt tokens: the fully expanded prompt tokenized as model.chat does (another path
    # than the engine's id insertion the plan uses), and overflow exactly where it reaches max_model_len.
    info = inspect_checkpoint(cfg.model)
    task = {t.name: t for t in cfg.task}
    for rid in ("square-0", "wide-1", "tall-0", "big-0", "pair-0"):
        row = next(r for r in sample if r.id == rid)
        sizes = [Image.open(u).size for u in row.images]  # none is rotated: stored size = decoded size
        per_image = tuple(predict_tiles(w, h, 6 if len(sizes) == 1 else 3) for w, h in sizes)
        for name in ("caption", "qa"):
            prompt = build_prompt(task[name].question_for(row.question), per_image, template=info.template)
            n = len(info.tokenizer.encode_prompt(prompt.text))
            assert by_id[rid].prompt_tokens[name] == n
            assert by_id[rid].status[name] == ("context_overflow" if n >= 1024 else "ok")
    overflow = {(o["id"], o["task"]) for o in plan.overflow}
    assert {i for i, _ in overflow} == {f"{k}-{c}" for k in ("tall", "big", "pair") for c in (0, 1)}
    assert "OVERFLOW: 12 sampled row x task pair(s) exceed the engine's max_model_len=1024" in plan.text()


def test_a_longrope_plan_holds_rows_to_the_engines_limits_and_points_to_verify(manifest, tmp_path, twin_dirs):
    """Mini-InternVL's twin at max_model_len 8192: the engine runs at 4096 (the card's short
    RoPE factors), so a row whose prompt + max_tokens passes 4096 is predicted context_overflow."""
    path, _ = manifest
    cfg = jobs.job_config(path, tmp_path / "out", str(twin_dirs["phi3"]))
    text = make_preflight(cfg).text()
    assert "rope: LongRoPE short factors, as the card within 4096 tokens: vLLM's max_model_len capped" in text
    assert "internvl-batch verify CONFIG" in text and "OVERFLOW" not in text
    long_answers = jobs.job_config(path, tmp_path / "out", str(twin_dirs["phi3"]), model={"rope_factors": "card"})
    long_answers = long_answers.model_copy(
        update={
            "task": [
                t.model_copy(update={"sampling": t.sampling.model_copy(update={"max_tokens": 2400})})
                for t in long_answers.task
            ]
        }  # fmt: skip
    )
    plan = make_preflight(long_answers)  # only the config's bound is refused (validate); rows are predicted
    assert {o["id"] for o in plan.overflow} >= {"big-0", "pair-0"}  # 7 tiles: 1,792 + text + 2,400 > 4,096
    assert "exceed the engine's max_model_len=4096" in plan.text()


def test_prompt_tokens_are_an_estimate_without_the_model(manifest, tmp_path):
    path, _ = manifest
    cfg = jobs.job_config(path, tmp_path / "out", str(tmp_path / "no-such-model"))
    plan = make_preflight(cfg)
    assert plan.tokens_source.startswith("ESTIMATE (model not reachable")
    # image tokens are exact in the estimate: at least 256 per tile (+2) of a row's tiles
    assert plan.prompt_tokens["caption"]["max"] >= 7 * 256 + 2
    assert plan.estimate is None and "--pairs-per-s" in plan.estimate_note


def test_gpu_hours_from_flags_and_from_a_previous_run(manifest, tmp_path, capsys):
    path, _ = manifest
    cfg = jobs.job_config(path, tmp_path / "out", str(tmp_path / "no-model"),
                          runtime={"use_gpu": True, "replicas": 4}, model={"tensor_parallel_size": 2})  # fmt: skip
    plan = make_preflight(cfg, rates=Rates("flags", pairs_per_s=2.0))
    pairs = plan.totals["pairs"]
    assert pairs == 2 * plan.rows
    assert plan.estimate["replica_hours"] == pytest.approx(pairs / 2.0 / 3600)
    assert plan.estimate["wall_hours"] == pytest.approx(plan.estimate["replica_hours"] / 4)
    assert plan.estimate["gpu_hours"] == pytest.approx(plan.estimate["replica_hours"] * 2)

    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "_SUCCESS").write_text(json.dumps({
        "run_id": "r1", "pairs_per_s": 10.0, "output_tokens_per_s": 50.0, "prompt_tokens_per_s": 1000.0,
        "resources": {"replicas": 2, "gpus_per_replica": 1},
    }))  # fmt: skip
    rates = Rates.from_success(str(prev))
    assert (rates.pairs_per_s, rates.tokens_per_s, rates.output_tokens_per_row) == (5.0, 525.0, 5.0)
    plan = make_preflight(cfg, rates=rates)
    t = plan.totals
    assert plan.output_tokens_source == "measured 5.0/row"
    # 5 tokens for each row x task pair predicted ok (plan.status: shares of pairs, two tasks)
    assert t["output_tokens"] == pytest.approx(plan.rows * 5.0 * 2 * plan.status["ok"])
    assert plan.estimate["replica_hours"] == pytest.approx((t["prompt_tokens"] + t["output_tokens"]) / 525 / 3600)

    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["plan", str(cfg_file), "--from-run", str(prev), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["estimate"]["gpu_hours"] == pytest.approx(plan.estimate["gpu_hours"])
    assert main(["plan", str(cfg_file), "--pairs-per-s", "2"]) == 0
    assert "GPU-hours (2.000 row x task pairs/s per replica from the command line)" in capsys.readouterr().out


def test_row_counts_exact_cached_or_estimated(tmp_path, monkeypatch):
    pq.write_table(pa.table({"id": [str(i) for i in range(1234)], "image": ["x.jpg"] * 1234}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"id": f"b{i}", "image": "x.jpg"}) + "\n" for i in range(3000))
    )
    cfg = jobs.job_config(tmp_path / "*", tmp_path / "out")
    fs, files = list_files(cfg.input)
    assert count_rows(cfg, fs, files)[:2] == (4234, "exact: parquet footers (1 file(s)), counted (1 file(s))")

    monkeypatch.setattr(sampling, "SCAN_LIMIT_BYTES", 0)
    monkeypatch.setattr(sampling, "_ESTIMATE_BYTES", 16 * 1024)
    rows, how, floors = count_rows(cfg, fs, files)
    assert how.startswith("ESTIMATE") and rows == pytest.approx(4234, rel=0.05)
    assert 0 < floors[files[1].path] < 3000  # what the sample may read of it

    # A run (or dry run) planned the file: its cached plan is taken while the file is unchanged.
    jsonl = files[1]
    state = tmp_path / "out" / "_state" / "files"
    state.mkdir(parents=True)
    (state / f"{jsonl.key}.json").write_text(json.dumps({"fingerprint": jsonl.fingerprint, "shards": [{"rows": 77}]}))
    assert count_rows(cfg, fs, files)[:2] == (1234 + 77, "exact: parquet footers (1 file(s)), "
                                              "the output's cached plan (1 file(s))")  # fmt: skip


# -- datasets with their media and prompts from the row ----------------------------------------


def test_embedded_images_and_filled_in_prompts(tmp_path):
    """A HF-style parquet: headers of the rows' own bytes, prompts filled in per row (a longer
    label, more tokens), a row without its label invalid for that task only."""
    from internvl_batch.job.readers import ManifestError
    from tests.support.datasets import image_bytes, write_hf_parquet

    rows = [{"id": "short", "image": {"bytes": image_bytes(1, (896, 448)), "path": None}, "label": "cat"},
            {"id": "long", "image": {"bytes": image_bytes(2, (448, 448)), "path": None},
             "label": "very long winded description of a small domestic feline animal"},
            {"id": "none", "image": {"bytes": image_bytes(3), "path": None}, "label": None},
            {"id": "junk", "image": {"bytes": b"not an image", "path": "junk.png"}, "label": "x"}]  # fmt: skip
    write_hf_parquet(tmp_path / "m.parquet", rows, label=pa.string())
    tasks = {"task": [{"name": "ask", "prompt": "Is it a {label}?"}, {"name": "caption", "preset": "short_caption"}]}
    cfg = jobs.job_config(tmp_path / "m.parquet", tmp_path / "out", str(tmp_path / "no-model"))
    cfg = cfg.model_validate({**cfg.model_dump(), **tasks})
    fs, files = list_files(cfg.input)
    sample, _ = sample_rows(cfg, fs, files, 100, count_rows(cfg, fs, files)[2])
    by_id = {p.id: p for p in plan_rows(cfg, sample)}
    assert (by_id["short"].tiles, by_id["long"].tiles) == (3, 1)  # 2x1 + thumbnail: from the bytes' header
    assert by_id["junk"].status == {"ask": "decode_error", "caption": "decode_error"}
    assert by_id["none"].status == {"ask": "invalid_row", "caption": "ok"}
    ask = {k: by_id[k].prompt_tokens["ask"] - 256 * by_id[k].tiles for k in ("short", "long")}
    assert ask["long"] > ask["short"] + 10  # the filled-in label is counted
    bad = cfg.model_validate({**cfg.model_dump(), "task": [{"name": "ask", "prompt": "Is it a {lable}?"}]})
    with pytest.raises(ManifestError, match=r"task 'ask': its prompt names column\(s\) \['lable'\]"):
        make_preflight(bad)


def test_plan_counts_clips_from_the_column_and_from_declared_durations(tmp_path):
    mp4 = write_sample_video(tmp_path / "v.mp4", frames=60, fps=12.0)  # 5 s, moov last
    avi = write_large_video(tmp_path / "v.avi", 8 * 1024**2, frame=(160, 120))  # MJPEG AVI
    rows = [
        {"id": "own", "video": str(mp4), "clips": [[0, 1], [1, 2], [2, 3]], "question": "q"},
        {"id": "mp4", "video": str(mp4), "question": "q"},
        {"id": "avi", "video": str(avi), "question": "q"},
        {"id": "img", "image": str(tmp_path / "nope.jpg"), "question": "q"},  # fetch_error: one row per task
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = jobs.job_config(path, tmp_path / "out", str(tmp_path / "no-model"),
                          preprocess={"video": {"num_segments": 4, "clip_s": 2.0}})  # fmt: skip
    vr = VideoReader(str(avi))
    avi_clips = len(fixed_clips(len(vr) / vr.get_avg_fps(), 2.0, None))  # what the job will cut
    by_id = {p.id: p for p in check_sample(cfg, 10).plans}  # validate's call
    assert {k: p.clips for k, p in by_id.items()} == {"own": 3, "mp4": 3, "avi": avi_clips, "img": 1}
    assert avi_clips > 3 and by_id["own"].tiles == by_id["mp4"].tiles == 3 * 4
    plan = make_preflight(cfg, rates=Rates("flags", pairs_per_s=2.0))
    assert plan.totals["pairs"] == 8 and plan.totals["output_rows"] == 2 * (3 + 3 + avi_clips + 1)
    assert f"clips: videos cut into clips make {plan.totals['output_rows']:,.0f} output rows" in plan.text()
    assert plan.estimate["replica_hours"] == pytest.approx(plan.totals["output_rows"] / 2.0 / 3600)
