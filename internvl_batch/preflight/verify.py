"""`internvl-batch verify CONFIG [--rows N]`: does this job answer as the checkpoint's own code?

Run before a first night on a new checkpoint (or a new template, dtype, engine version).
The first N rows of the manifest go through the job's real path: the prepare stage's fetch,
decode and tiling, the inference stage's prompt, the configured engine (vLLM in production)
with its RoPE plan. Then, on the same device, after that engine is shut down, through the
checkpoint's own reference: `model.chat` of its remote code when `model.trust_remote_code`
allows it and the checkpoint ships it (`reference_chat.py`), else the HF reference engine as
model.chat runs the checkpoint (its own template whatever `model.template` says, the card's
RoPE at every length, transformers' model). Both greedy, each task's max_tokens (or
`--max-tokens`), no stop strings.

Per row and task: the prompt ids (identical, or the first difference, decoded) and the
generated tokens (identical, or the first differing position with both tokens decoded and
the reference's logits there). A difference where the job's token is the reference's
second choice within `tie_margin` logits counts as a tie (two engines' kernels may round a
near-tie either way), and says so; anything else fails. Exit 0 only when every compared
pair agrees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from internvl_batch.config import JobConfig, SamplingConfig
from internvl_batch.engines.base import EngineRequest, EngineResult
from internvl_batch.model.prompts import build_prompt
from internvl_batch.preflight.reference import Step, load_reference
from internvl_batch.status import Status

DEFAULT_ROWS = 4
TIE_MARGIN = 0.05  # logits; float32 engines differ by ~1e-4, bfloat16 kernels by ~1e-2


@dataclass
class Case:
    row: str
    task: str
    job: EngineRequest | None = None  # None: skipped (why in `skipped`)
    reference: EngineRequest | None = None  # the same row as model.chat prompts it
    skipped: str | None = None
    question: str | None = None  # the row's question for this task, and its system message
    system_message: str | None = None


@dataclass
class Comparison:
    row: str
    task: str
    verdict: str  # identical | tie | differs | skipped | error
    detail: str
    prompt_identical: bool | None = None
    tokens: int = 0
    margin: float | None = None


def _piece(token_name: Callable[[int], str], i: int | None) -> str:
    return "<end>" if i is None else f"{token_name(i)} (id {i})"


def compare(
    case: Case,
    job: tuple[EngineResult, list[int]],
    ref: tuple[EngineResult, list[int], list[Step]],
    token_name: Callable[[int], str],
    tie_margin: float = TIE_MARGIN,
) -> Comparison:
    (jr, job_prompt), (rr, ref_prompt, steps) = job, ref
    for who, r in (("job", jr), ("reference", rr)):
        if r.status != Status.OK:
            return Comparison(case.row, case.task, "error", f"{who}: {r.status}: {r.error}")
    out = Comparison(case.row, case.task, "identical", "", prompt_identical=job_prompt == ref_prompt)
    notes = []
    if not out.prompt_identical:
        k = next((i for i, (a, b) in enumerate(zip(job_prompt, ref_prompt)) if a != b), None)
        k = min(len(job_prompt), len(ref_prompt)) if k is None else k
        a = job_prompt[k] if k < len(job_prompt) else None
        b = ref_prompt[k] if k < len(ref_prompt) else None
        notes.append(
            f"PROMPT IDS DIFFER at {k} of {len(job_prompt)} vs {len(ref_prompt)}: job {_piece(token_name, a)} vs "
            f"reference {_piece(token_name, b)}"
        )
        out.verdict = "differs"
    else:
        notes.append(f"prompt {len(job_prompt):,} ids identical")
    jt, rt = list(jr.token_ids), list(rr.token_ids)
    i = next((n for n, (a, b) in enumerate(zip(jt, rt)) if a != b), None)
    if i is None and len(jt) == len(rt):
        out.tokens = len(jt)
        notes.append(f"{len(jt)} tokens identical")
        out.detail = "; ".join(notes)
        return out
    i = min(len(jt), len(rt)) if i is None else i
    a, b = (jt[i] if i < len(jt) else None), (rt[i] if i < len(rt) else None)
    what = f"token {i}: job {_piece(token_name, a)} vs reference {_piece(token_name, b)}"
    step = steps[i] if i < len(steps) else None
    if step is not None and a is not None and step.job_logit is not None:
        out.margin = step.best[1] - step.job_logit
        what += f"; reference logits there: best {step.best[1]:.4f}, job's token {step.job_logit:.4f}"
        what += f" (rank {step.job_rank}), margin {out.margin:.4f}"
        if step.job_rank == 2 and out.margin < tie_margin and out.verdict == "identical":
            out.verdict = "tie"
            what += f" < {tie_margin}: a tie (the job's token is the reference's close second), not a failure"
        else:
            out.verdict = "differs"
    else:
        out.verdict = "differs"
    out.tokens = i
    notes.append(what)
    out.detail = "; ".join(notes)
    return out


def greedy(sampling: SamplingConfig, max_tokens: int | None) -> SamplingConfig:
    """The row's sampling made greedy, one answer, no stop strings (raw tokens are compared)."""
    n = sampling.max_tokens if max_tokens is None else min(max_tokens, sampling.max_tokens)
    return sampling.model_copy(
        update={"temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": None, "stop": (), "max_tokens": n,
                "min_tokens": min(sampling.min_tokens, n), "n": 1}
    )  # fmt: skip


@dataclass
class VerifyReport:
    source: str
    job_path: str
    reference: str
    tie_margin: float
    comparisons: list[Comparison] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.comparisons:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        n = self.counts()
        return n.get("identical", 0) + n.get("tie", 0) > 0 and not (n.get("differs") or n.get("error"))

    def text(self) -> str:
        lines = [f"verify: {self.source}", f"job path:  {self.job_path}", f"reference: {self.reference}"]
        width = max((len(c.row) for c in self.comparisons), default=4)
        for c in self.comparisons:
            lines.append(
                f"  {c.row:<{width}}  {c.task:<10} {c.verdict.upper() if c.verdict == 'differs' else c.verdict:<9}  {c.detail}"
            )
        n = self.counts()
        compared = sum(v for k, v in n.items() if k != "skipped")
        lines.append(
            f"result: {n.get('identical', 0)} of {compared} compared row x task pair(s) identical, {n.get('tie', 0)} "
            f"tie(s) (margin < {self.tie_margin}), {n.get('differs', 0)} differ(s), {n.get('error', 0)} error(s), "
            f"{n.get('skipped', 0)} skipped -> {'OK' if self.ok else 'FAILED'}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "comparisons"},
                "ok": self.ok, "counts": self.counts(),
                "comparisons": [dataclasses.asdict(c) for c in self.comparisons]}  # fmt: skip


# -- the two paths ------------------------------------------------------------------------------


def job_prompt_ids(engine) -> Callable[[EngineRequest], list[int]]:
    """The prompt ids the engine really ran: vLLM's own, else what the engine encoded."""
    own = getattr(engine, "prompt_token_ids", None)
    return own if own is not None else (lambda req: engine.checkpoint.tokenizer.prompt_ids(req.prompt).ids)


def run_job_path(engine, cases: list[Case]) -> dict[int, tuple[EngineResult, list[int]]]:
    todo = [(i, c) for i, c in enumerate(cases) if c.job is not None]
    results = engine.generate([c.job for _, c in todo])
    ids = job_prompt_ids(engine)
    return {i: (r, ids(c.job) if r.status == Status.OK else []) for (i, c), r in zip(todo, results)}


def run_reference(reference, cases: list[Case], job: dict[int, tuple[EngineResult, list[int]]]):
    out = {}
    for i, c in enumerate(cases):
        if i not in job:
            continue
        if c.reference is None:
            c.reference = reference_request(c.job, c.question, c.system_message, reference.template)
        out[i] = reference.trace(c.reference, follow=job[i][0].token_ids)
    return out


def compare_cases(cases, job, ref, token_name, tie_margin: float = TIE_MARGIN) -> list[Comparison]:
    out = []
    for i, c in enumerate(cases):
        if c.skipped is not None:
            out.append(Comparison(c.row, c.task, "skipped", c.skipped))
        else:
            out.append(compare(c, job[i], ref[i], token_name, tie_margin))
    return out


def reference_request(req: EngineRequest, question: str, system_message: str | None, template) -> EngineRequest:
    """The same row and tiles, prompted as model.chat prompts it: the checkpoint's template."""
    kwargs = {"system_message": system_message} if system_message is not None else {}
    media = req.prompt.media if req.prompt.media != "none" else None
    prompt = build_prompt(question, req.prompt.tiles_per_image, media=media, template=template, **kwargs)
    return dataclasses.replace(req, prompt=prompt)


# -- the command ---------------------------------------------------------------------------------


def sample_cases(cfg: JobConfig, rows: int, max_tokens: int | None, stage) -> list[Case]:
    """The first `rows` manifest rows, fetched, decoded and tiled by the prepare stage, and
    each task's request as the inference stage (`stage`, with the configured engine) makes it."""
    import pyarrow as pa

    from internvl_batch.job.readers import read_manifest
    from internvl_batch.job.stages.prepare import PrepareStage
    from internvl_batch.records import item_schema

    manifest_rows = read_manifest(cfg.input.model_copy(update={"limit": rows}), columns=cfg.prompt_columns())
    names = [t.name for t in cfg.task]
    items = [r.item(names, "verify", i) for i, r in enumerate(manifest_rows)]
    table = pa.Table.from_pylist(items, schema=item_schema(cfg.input.passthrough))
    prepared = PrepareStage(cfg.preprocess, cfg.input.passthrough).process(table).to_pylist()
    cases = []
    for row in prepared:
        for task in cfg.task:
            case = Case(row["id"], task.name)
            if row["status"] != Status.OK:
                case.skipped = f"{row['status']}: {row['error']}"
                cases.append(case)
                continue
            # the inference stage's own request for this row and task (its private helpers:
            # verify must take the very path the job takes)
            req = stage._request(row, task)
            if isinstance(req, EngineResult):
                case.skipped = f"{req.status}: {req.error}"
            elif req.sampling.json_schema is not None:
                case.skipped = "json_schema: the reference has no grammar to follow"
            else:
                case.question, _, case.system_message = stage._row_request(row, task)
                case.job = dataclasses.replace(req, sampling=greedy(req.sampling, max_tokens))
            cases.append(case)
    return cases


def run_verify(
    cfg: JobConfig, rows: int = DEFAULT_ROWS, tie_margin: float = TIE_MARGIN, max_tokens: int | None = None,
    source: str = "",
) -> VerifyReport:  # fmt: skip
    """The job's path, then the reference, one after the other on this machine's device."""
    from internvl_batch.job.stages.inference import InferenceStage

    stage = InferenceStage(cfg.model, cfg.task, cfg.input.passthrough, run_id="verify")
    engine = stage.engine
    try:
        cases = sample_cases(cfg, rows, max_tokens, stage)
        job = run_job_path(engine, cases)
        plan = engine.checkpoint.rope_plan
        job_path = (
            f"{cfg.model.engine} engine as the job runs it: template {engine.template.name!r}, max_model_len "
            f"{engine.max_model_len} ({plan.note}), dtype {cfg.model.dtype}, greedy"
        )
    finally:
        engine.shutdown()  # frees the device for the reference
    reference = load_reference(cfg)
    try:
        ref = run_reference(reference, cases, job)
        report = VerifyReport(
            f"{len(cases) // max(len(cfg.task), 1)} row(s) x {len(cfg.task)} task(s) of {source or cfg.input.path} "
            "(its first rows)",
            job_path,
            reference.describe(),
            tie_margin,
        )
        report.comparisons = compare_cases(cases, job, ref, reference.token_name, tie_margin)
    finally:
        reference.shutdown()
    return report
