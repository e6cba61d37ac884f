"""`verify`: the job's path against the checkpoint's own reference, row by row and token by
token. The comparison's verdicts on made-up results; then the command on the tiny twins:
it passes through vLLM, and fails naming the first differing token or prompt id when the
job runs with long RoPE factors forced or with another template than the checkpoint's."""

import pytest
import yaml

from internvl_batch.cli import main
from internvl_batch.devtools.hf_engine import on_hf_engine
from internvl_batch.engines.base import EngineResult
from internvl_batch.model.check import ModelCheckError
from internvl_batch.preflight.reference import Step
from internvl_batch.preflight.verify import Case, compare, run_verify
from tests.observe import jobs

NAMES = {1: "'<s>'", 7: "'cat' [▁cat]", 8: "'dog' [▁dog]", 9: "'the' [▁the]", 864: "'' [▁]"}


def _cmp(job_tokens, ref_tokens, steps=(), job_prompt=(1, 5, 6), ref_prompt=(1, 5, 6), margin=0.05):
    ok = lambda t: EngineResult("r", "ok", token_ids=tuple(t))  # noqa: E731
    job, ref = (ok(job_tokens), list(job_prompt)), (ok(ref_tokens), list(ref_prompt), list(steps))
    return compare(Case("row-1", "caption"), job, ref, lambda i: NAMES.get(i, f"'t{i}'"), margin)


def test_identical_tokens_and_prompt():
    c = _cmp([7, 9, 2], [7, 9, 2])
    assert c.verdict == "identical" and c.prompt_identical and c.tokens == 3
    assert c.detail == "prompt 3 ids identical; 3 tokens identical"


def test_the_first_differing_token_is_named_with_the_references_margin():
    steps = [Step((7, 5.0), (8, 1.0), 5.0, 1), Step((9, 4.0), (7, 3.0), 1.5, 7)]
    c = _cmp([7, 8, 2], [7, 9, 2], steps)
    assert c.verdict == "differs" and c.tokens == 1 and c.margin == pytest.approx(2.5)
    assert "token 1: job 'dog' [▁dog] (id 8) vs reference 'the' [▁the] (id 9)" in c.detail
    assert "best 4.0000, job's token 1.5000 (rank 7), margin 2.5000" in c.detail


def test_a_close_second_is_a_tie_and_says_so():
    steps = [Step((9, 4.0), (8, 3.99), 3.99, 2)]
    c = _cmp([8, 2], [9, 7], steps)
    assert c.verdict == "tie" and "< 0.05: a tie" in c.detail
    assert _cmp([8, 2], [9, 7], steps, margin=0.001).verdict == "differs"  # the threshold decides
    third = [Step((9, 4.0), (7, 3.995), 3.99, 3)]  # close, but not the reference's second choice
    assert _cmp([8, 2], [9, 7], third).verdict == "differs"


def test_different_prompt_ids_fail_even_with_the_same_tokens():
    c = _cmp([7, 2], [7, 2], job_prompt=(1, 5, 6), ref_prompt=(1, 864, 5, 6))
    assert c.verdict == "differs" and not c.prompt_identical
    assert "PROMPT IDS DIFFER at 1 of 3 vs 4: job 't5' (id 5) vs reference '' [▁] (id 864)" in c.detail


def test_a_shorter_answer_differs_at_its_end():
    c = _cmp([7], [7, 9, 2], [Step((7, 1.0), (8, 0.0), 1.0, 1), Step((9, 1.0), (8, 0.0))])
    assert c.verdict == "differs" and "token 1: job <end> vs reference 'the' [▁the] (id 9)" in c.detail


def test_an_error_on_either_side_is_no_agreement():
    job = (EngineResult.failed("r", "context_overflow", "too long"), [])
    ref = (EngineResult("r", "ok", token_ids=(7,)), [1], [])
    c = compare(Case("row-1", "caption"), job, ref, repr)
    assert c.verdict == "error" and "job: context_overflow: too long" in c.detail


# -- the command on the twins --------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    jobs.write_manifest(root / "m.jsonl", jobs.write_media(root / "media"))
    return root


def _config(root, model_path, **model) -> str:
    cfg = jobs.job_config(root / "m.jsonl", root / "out", str(model_path), model=model)
    path = root / f"verify-{abs(hash(repr(model)))}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def _verify_on_hf(root, model_path, rows: int, max_tokens: int, **model) -> tuple[bool, str]:
    """`verify` with the job's path on the HF reference engine (fast: no vLLM to start), which
    no config file can choose: the command's own steps on the config devtools marked."""
    cfg = on_hf_engine(jobs.job_config(root / "m.jsonl", root / "out", str(model_path), model=model))
    report = run_verify(cfg, rows, max_tokens=max_tokens)
    return report.ok, report.text()


@pytest.mark.slow
def test_verify_passes_on_the_phi3_twin_through_vllm(manifest, twin_dirs, capsys):
    """Mini-InternVL's twin: the card's slow-tokenizer ids, vLLM capped at 4096 for short factors."""
    assert main(["verify", _config(manifest, twin_dirs["phi3"]), "--rows", "3", "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "job path:  vllm engine" in out and "max_model_len 4096" in out and "capped at 4096" in out
    assert out.count(" identical  prompt ") == 6  # 3 rows x 2 tasks
    assert "result: 6 of 6 compared row x task pair(s) identical" in out and out.rstrip().endswith("OK")


def test_verify_fails_naming_the_first_token_when_long_factors_are_forced(manifest, twin_dirs):
    ok, out = _verify_on_hf(manifest, twin_dirs["phi3"], 2, 6, rope_factors="long")
    assert not ok
    assert "LongRoPE long factors at every length" in out and "FAILED" in out
    lines = [line for line in out.splitlines() if " DIFFERS " in line]
    assert len(lines) == 4 and all("ids identical; token " in line and "margin" in line for line in lines)


def test_verify_fails_naming_the_first_prompt_id_under_another_template(manifest, twin_dirs):
    """InternVL2.5-1B's twin run with InternVL2's Hermes-2 template: the reference keeps the
    checkpoint's own (internvl2_5), as model.chat does."""
    ok, out = _verify_on_hf(manifest, twin_dirs["qwen2"], 1, 4, template="Hermes-2")
    assert not ok
    assert "job path:  hf engine as the job runs it: template 'Hermes-2'" in out
    assert "the checkpoint's template 'internvl2_5'" in out
    assert out.count("PROMPT IDS DIFFER at ") == 2 and out.count(" DIFFERS ") == 2


def test_verify_refuses_a_job_the_rope_plan_refuses(manifest, twin_dirs, capsys):
    config = _config(manifest, twin_dirs["phi3"])
    assert main(["verify", config, "--set", "preprocess.multi_image_max_num=12", "--set",
                 "preprocess.max_num=12"]) == 2  # fmt: skip
    assert "error: model.rope_factors: this checkpoint's RoPE is LongRoPE" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["qwen2", "phi3"])
def test_verify_compares_with_model_chat_of_the_checkpoints_own_code(manifest, twin_dirs, tmp_path, family):
    """trust_remote_code: the reference is the checkpoint's `model.chat` (here a stand-in remote
    module, tests/support/fake_remote_chat.py), watched for its prompt ids, tokens and scores.
    Phi-3: transformers 5 has no slow LlamaTokenizer, so model.chat is handed its ids."""
    import shutil

    from tests.support import fake_remote_chat

    d = fake_remote_chat.install(shutil.copytree(twin_dirs[family], tmp_path / f"remote-{family}"))
    ok, out = _verify_on_hf(manifest, d, 2, 6, trust_remote_code=True)
    assert ok
    assert "reference: model.chat of the checkpoint's own code (FakeChatModel, trust_remote_code)" in out
    assert ("the slow class's ids, llama_slow.py" in out) == (family == "phi3")
    assert out.count(" identical  prompt ") == 4
    if family == "phi3":
        return
    # the same checkpoint run with another template: model.chat's own prompt tells it apart
    ok, out = _verify_on_hf(manifest, d, 1, 4, trust_remote_code=True, template="Hermes-2")
    assert not ok and out.count("PROMPT IDS DIFFER at ") == 2


def test_remote_code_that_does_not_load_names_trust_remote_code(manifest, twin_dirs, tmp_path):
    import json
    import shutil

    d = shutil.copytree(twin_dirs["qwen2"], tmp_path / "remote-broken")
    (d / "modeling_broken.py").write_text("raise ImportError('written for transformers 4.37')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_broken.BrokenConfig", "AutoModel": "modeling_broken.BrokenModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelCheckError) as raised:
        _verify_on_hf(manifest, d, 1, 2, trust_remote_code=True)
    err = f"error: {raised.value}"
    assert "error: model.trust_remote_code: the checkpoint's remote code does not load" in err
    assert "written for transformers 4.37" in err and "model.trust_remote_code: false" in err
