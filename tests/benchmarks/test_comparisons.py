"""Each comparing benchmark's per-run check, fed one mismatch: the check fails naming the
rows (so the benchmark exits 1). No vLLM, no Ray: the sides' results are built here in
the shapes the sides return."""

from benchmarks import common, engine, engine_feed, peers, scale


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_engine_pretiled_vs_stock_token_ids(capsys):
    check = common.AnswerCheck()
    stock = {"img0": (5, 6, 2), "img1": (7, 8, 2), "img2": (9, 2)}
    engine.compare_run(check, 0, {"stock": {"tokens": stock}, "pretiled": {"tokens": dict(stock)}})
    engine.compare_run(check, 1, {"stock": {"tokens": stock}, "pretiled": {"tokens": stock | {"img1": (7, 3, 2)}}})
    assert check.exit_code() == 1
    assert "ANSWERS DIFFER output token ids, run 2: pre-tiled vs vLLM tiles: 1 of 3 rows: img1" in _lines(capsys)
    assert len(check.failures) == 1  # run 1 matched


def _feed_side(answers: dict) -> dict:
    return {"busy_s": 10.0, "occupancy": 0.99, "wall_s": 20.0, "answers": answers}


def test_engine_feed_bare_vs_job(capsys):
    bare = {"r0/short": ["a cat", 3], "r0/long": ["a cat on a mat", 6], "r1/short": ["a dog", 3]}
    job = bare | {"r0/long": ["a cat on a hat", 6]}
    del job["r1/short"]  # a row the job lost
    check = common.AnswerCheck()
    this = {"bare": _feed_side(bare), "job": _feed_side(job)}
    engine_feed.compare_run(check, 2, this)
    assert check.exit_code() == 1
    assert "ANSWERS DIFFER answers, run 3: job vs bare: 2 of 3 rows: r0/long, r1/short" in _lines(capsys)
    assert "answers" not in this["job"]  # popped: the figures stay, the answers go


def _peer(rows: int = 3, failed: int = 0, **answers) -> dict:
    return {"rows": rows, "failed": failed, "errors": [], **answers}


def test_peers_job_texts_and_ray_data_llm_tokens_vs_bare(capsys):
    texts = {"r000": "a", "r001": "b", "r002": "c"}
    tokens = {"r000": [1, 2], "r001": [3, 4], "r002": [5, 6]}
    this = {
        "bare": _peer(answers=texts, tokens=tokens),
        "job": _peer(answers=texts | {"r002": "C"}),
        "rdl": _peer(tokens=tokens | {"r000": [1, 9]}),
    }
    check = common.AnswerCheck()
    same = peers.compare_run(check, "max_tokens 16 run 1", this, 3)
    assert same == {"job": 2, "rdl": 2}
    lines = _lines(capsys)
    assert "ANSWERS DIFFER max_tokens 16 run 1, texts: job vs bare engine: 1 of 3 rows: r002" in lines
    assert "ANSWERS DIFFER max_tokens 16 run 1, token ids: Ray Data LLM vs bare engine: 1 of 3 rows: r000" in lines
    assert check.exit_code() == 1


def test_peers_a_crashed_side_or_failed_rows_fail(capsys):
    texts = {"r000": "a", "r001": "b"}
    this = {"bare": _peer(2, answers=texts, tokens={}), "job": _peer(2, failed=1, answers=texts), "rdl": None}
    check = common.AnswerCheck()
    peers.compare_run(check, "max_tokens 16 run 2", this, 2)
    lines = _lines(capsys)
    assert "FAILED max_tokens 16 run 2: the Ray Data LLM side crashed (its error is printed above)" in lines
    assert "FAILED max_tokens 16 run 2: job: 2/2 rows, 1 failed: []" in lines
    assert check.exit_code() == 1


def test_peers_equal_answers_pass(capsys):
    texts, tokens = {"r000": "a"}, {"r000": [1]}
    this = {
        "bare": _peer(1, answers=texts, tokens=tokens),
        "job": _peer(1, answers=texts),
        "rdl": _peer(1, tokens=tokens),
    }
    check = common.AnswerCheck()
    assert peers.compare_run(check, "run 1", this, 1) == {"job": 1, "rdl": 1}
    assert check.exit_code() == 0


def test_scale_plans_every_row_and_writes_each_once(capsys):
    this = {
        "dry run 1M parquet": {"rows": 1_000_000, "shards": 50},
        "dry run 1M jsonl": {"rows": 999_999, "shards": 50},
        "dry run 1k webdataset": {"rows": 4_000, "shards": 999},
        "data plane 1M": {"exactly_once": True, "kill": {"exactly_once": False}},
    }
    expected = {"dry run 1M parquet": {"rows": 1_000_000}, "dry run 1M jsonl": {"rows": 1_000_000},
                "dry run 1k webdataset": {"rows": 4_000, "shards": 1_000}}  # fmt: skip
    check = common.AnswerCheck()
    scale.check_run(check, 0, this, expected)
    lines = _lines(capsys)
    assert (
        "ANSWERS DIFFER plans, run 1: plan vs manifest: 2 of 3 rows: dry run 1M jsonl, dry run 1k webdataset" in lines
    )
    assert "ANSWERS DIFFER data plane 1M, run 1: output vs expected: 1 of 2 rows: kill, rerun exactly once" in lines
    assert check.exit_code() == 1
