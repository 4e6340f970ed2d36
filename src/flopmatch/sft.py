"""SFT data: a model's answer-correct solutions → a Hugging Face dataset on disk, with lineage.

The paper fine-tunes on solutions whose final answer matches the gold answer (steps unchecked). This
module turns a run's samples and grades into that training set:

- keep the first S samples per problem (S = the source model's samples per problem at the chosen
  budget, read from ``plan.json``; since per-sample seeds make the low budget a prefix of the high
  one, ``sample_idx < S`` *is* the budget), graded ``correct``;
- optionally drop solutions an LLM judge called invalid (``judge_filter``), exact duplicates within a
  problem (``dedupe``), cap solutions per problem (``max_per_problem``; the paper's "one correct
  solution per problem" ablation is ``max_per_problem=1``), or match numbers (``number_matched_to``:
  the paper's number-matched control — WC data with SE's samples per problem — or a fixed count);
- write ``datasets.Dataset.save_to_disk`` at ``RunDir.sft_dir(name)``.

Representation (one for every model): each row holds **both**

- ``messages``: the conversation (user = the prompt, assistant = the solution), for people and tools
  that expect chat data; and
- ``prompt`` / ``completion``: TRL's *prompt-completion* format, which is what training reads. TRL
  computes the loss on the completion only for this format, whether ``prompt`` is a raw string
  (base models, the toy world: completion = the sampled text, EOS appended by TRL) or a list of chat
  messages (instruct models: completion = ``[{"role": "assistant", ...}]``, rendered with the chat
  template, which also teaches the end-of-turn token). ``messages`` alone would need a chat template
  with ``{% generation %}`` markers for assistant-only loss, which most templates lack.

The prompt is built by :func:`flopmatch.prompts.build_prompt`; by default with the dataset's prompt
config made zero-shot (:func:`sft_prompt_config`). The config is recorded per dataset in
``flopmatch_sft.json`` next to the data, copied next to every model trained on it, and reused by
:func:`flopmatch.evaluation.evaluate` — so a fine-tuned model is evaluated in its training format.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, as_run, model_key, read_json, shard_paths, write_json
from flopmatch.store.queries import (
    below_budget,
    grades_file,
    load_problems,
    read_graded,
    read_judgments,
    samples_at_budget,
)

SFT_META_FILE = "flopmatch_sft.json"
"""Build record written inside every SFT dataset directory (config, counts, prompt config)."""


class SftInputError(FlopmatchError, ValueError):
    """A run :func:`build_sft` cannot build from: a graded sample without its text."""


@dataclass(frozen=True)
class SFTBuildResult:
    """What :func:`build_sft` wrote. ``mean_per_problem`` is over covered problems only."""

    path: Path
    problems_covered: int
    examples: int
    mean_per_problem: float
    problems_total: int = 0
    samples_per_problem: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# --------------------------------------------------------------------------- pure selection logic


def select_examples(
    rows: list[dict[str, Any]],
    *,
    samples_per_problem: int,
    max_per_problem: int | None = None,
    dedupe: bool = False,
    number_matched_to: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Choose training examples from graded sample rows (pure; the whole policy of :func:`build_sft`).

    ``rows`` need ``problem_id``, ``sample_idx``, ``status`` and ``text``; rows are already judge-filtered.
    Order of operations: budget prefix (``sample_idx < samples_per_problem``) → ``correct`` only →
    dedupe within a problem (exact duplicates after
    :func:`flopmatch.metrics.normalize_solution`, the uniqueness of diversity@k; keeps the lowest
    ``sample_idx``) → first ``max_per_problem`` by
    ``sample_idx`` → a seeded uniform subset of ``number_matched_to`` examples. The result is sorted
    by (problem_id, sample_idx), so it does not depend on the order of ``rows``.
    """
    if samples_per_problem < 1:
        raise ValueError(f"samples_per_problem must be >= 1, got {samples_per_problem}")
    if max_per_problem is not None and max_per_problem < 1:
        raise ValueError(f"max_per_problem must be >= 1, got {max_per_problem}")
    if number_matched_to is not None and number_matched_to < 0:
        raise ValueError(f"number_matched_to must be >= 0, got {number_matched_to}")

    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["sample_idx"] < samples_per_problem and row["status"] == "correct":
            by_problem[row["problem_id"]].append(row)

    chosen: list[dict[str, Any]] = []
    for problem_id in sorted(by_problem):
        group = sorted(by_problem[problem_id], key=lambda r: r["sample_idx"])
        if dedupe:
            from flopmatch.metrics import normalize_solution

            seen: set[str] = set()
            unique = []
            for row in group:
                key = normalize_solution(row["text"])
                if key not in seen:
                    seen.add(key)
                    unique.append(row)
            group = unique
        if max_per_problem is not None:
            group = group[:max_per_problem]
        chosen.extend(group)

    if number_matched_to is not None:
        if number_matched_to > len(chosen):
            raise ValueError(
                f"number_matched_to={number_matched_to} asks for more examples than the "
                f"{len(chosen)} available after filtering"
            )
        picked = sorted(random.Random(seed).sample(range(len(chosen)), number_matched_to))
        chosen = [chosen[i] for i in picked]
    return chosen


def default_sft_name(
    source_model: str,
    *,
    budget: int | None,
    samples_per_problem: int,
    max_per_problem: int | None = None,
    dedupe: bool = False,
    judge_filter: bool = False,
) -> str:
    """``<model_key>-b<budget>`` (or ``-s<S>`` without a budget), plus one suffix per ablation option
    (``-k<K>`` cap, ``-dedupe``, ``-judged``; number matching adds ``-n<N>`` or ``-nm<S>``)."""
    name = f"{model_key(source_model)}-" + (f"b{budget}" if budget is not None else f"s{samples_per_problem}")
    if max_per_problem is not None:
        name += f"-k{max_per_problem}"
    if dedupe:
        name += "-dedupe"
    if judge_filter:
        name += "-judged"
    return name


# --------------------------------------------------------------------------- run-directory I/O


def resolve_samples_per_problem(run: RunDir, source_model: str, budget: int) -> int:
    """This model's samples per problem at SE budget ``budget``, from the run's ``plan.json``.

    The plan lists budgets as (se_samples, wc_samples) pairs and names the WC and SE models; the
    source model must be one of them (compared by :func:`flopmatch.store.model_key`, as the sample
    directories are named).
    """
    path = run.plan_path
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no plan in this run; pass samples_per_problem= (--samples-per-problem) instead of a budget"
        )
    return samples_at_budget(run, source_model, budget)


def graded_samples(run: RunDir, source_model: str) -> pa.Table:
    """The model's graded samples with their seed and text
    (:func:`~flopmatch.store.queries.read_graded`): what :func:`build_sft` selects from, at any budget.
    The one read of the model's sample text; a study's sft stage reads it once for all of a model's sets
    (``build_sft(graded=...)``). Every sample must be graded and have a text."""
    samples_dir = run.samples_dir(source_model)
    if not shard_paths(samples_dir):
        raise FileNotFoundError(f"{samples_dir}: no sample shards for model {source_model!r}")
    table = read_graded(run, source_model, text=True, columns=("seed",), path=grades_file(run, source_model),
                        every_sample_graded=True)  # fmt: skip
    # a grade whose sample row is gone (never a correct one: read_graded refuses that) selects nothing
    table = table.filter(pc.is_valid(table.column("seed")))
    texts = table.column("text")
    if texts.null_count:
        i = next(i for i, text in enumerate(texts.to_pylist()) if text is None)
        pid, idx = table.column("problem_id")[i].as_py(), table.column("sample_idx")[i].as_py()
        raise SftInputError(f"sample problem_id={pid!r}, sample_idx={idx} has no text", file=samples_dir)
    return table


def _judge_verdicts(run: RunDir, source_model: str, judge_name: str | None) -> dict[tuple[str, int], str]:
    """(problem_id, sample_idx) -> verdict of one judge (the only one in the table when not named)."""
    path = run.judgments_path(source_model)
    if not path.exists():
        raise FileNotFoundError(f"{path}: judge_filter needs judgments; run `flopmatch judge` first")
    table = read_judgments(run, source_model, judge_name)
    _require_columns(table, ("problem_id", "sample_idx", "status"), path)
    if judge_name is None and "judge" in table.column_names:
        judges = sorted(set(table.column("judge").to_pylist()))
        if len(judges) > 1:
            raise ValueError(f"{path}: judgments from several judges {judges}; name one (judge_filter='<judge>')")
    verdicts: dict[tuple[str, int], str] = {}
    for pid, idx, status in zip(
        table.column("problem_id").to_pylist(),
        table.column("sample_idx").to_pylist(),
        table.column("status").to_pylist(),
        strict=True,
    ):
        verdicts[(pid, int(idx))] = status
    return verdicts


def apply_judge_filter(
    rows: list[dict[str, Any]], verdicts: dict[tuple[str, int], str], *, source: str = "judgments"
) -> list[dict[str, Any]]:
    """Drop correct solutions the judge called ``invalid``.

    ``valid`` and ``unparseable`` verdicts are kept: an unparseable judgment carries no evidence
    against the solution, and dropping it would silently shrink the data. A correct solution with
    no judgment at all is an error (the judge has not covered the data being filtered).
    """
    correct = [(r["problem_id"], r["sample_idx"]) for r in rows if r["status"] == "correct"]
    missing = [key for key in correct if key not in verdicts]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of the {len(correct)} correct solutions at this budget have no judgment "
            f"(first: problem_id={missing[0][0]!r} sample_idx={missing[0][1]}); the filter needs a verdict for "
            f"each, so judge them all (e.g. `flopmatch judge` with per-model >= {len(correct)})"
        )
    kept = []
    for row in rows:
        if row["status"] != "correct":
            kept.append(row)
            continue
        key = (row["problem_id"], row["sample_idx"])
        verdict = verdicts[key]
        if verdict not in ("valid", "invalid", "unparseable"):
            raise ValueError(f"{source}: unknown judgment status {verdict!r} for {key}")
        if verdict != "invalid":
            kept.append(row)
    return kept


def _require_columns(table: pa.Table, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (has {table.column_names})")


def _prompt_record(prompt_config: Any) -> Any:
    if prompt_config is None:
        return None
    if hasattr(prompt_config, "model_dump"):
        return prompt_config.model_dump(mode="json")
    if hasattr(prompt_config, "__dataclass_fields__"):
        return asdict(prompt_config)
    return prompt_config


# --------------------------------------------------------------------------- the builder


def build_sft(
    run_dir: str | Path | RunDir,
    *,
    source_model: str,
    samples_per_problem: int | None = None,
    budget: int | None = None,
    max_per_problem: int | None = None,
    dedupe: bool = False,
    judge_filter: bool | str = False,
    number_matched_to: int | str | Path | None = None,
    name: str | None = None,
    prompt: Any = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    graded: pa.Table | None = None,
) -> SFTBuildResult:
    """Build the SFT dataset of ``source_model``'s correct solutions in a run; see the module docstring.

    Give either ``budget`` (SE samples per problem; resolved through ``plan.json`` to this model's
    S) or ``samples_per_problem`` directly (both: they must agree). ``number_matched_to``: the other
    model of the plan (use only as many samples per problem as it has at this budget — the paper's
    number-matched control), an int (a seeded subset of that many examples), or the name/path of
    another SFT dataset (match its number of examples). ``judge_filter``: True, or a judge name when
    the judgments table holds several judges. ``prompt`` is a
    :class:`flopmatch.prompts.PromptConfig` (default: :func:`sft_prompt_config`, the dataset's
    evaluation prompt, zero-shot). ``out_dir``: where to write it (default ``RunDir.sft_dir(name)``; a
    study writes the sets of its allocated runs into its own ``sft/``). ``graded``: the model's
    :func:`graded_samples` when the caller already read them (several sets of one model, one read); read
    here when None.
    """
    run = as_run(run_dir)
    from flopmatch.allocation_metrics import journal_of

    journal = journal_of(run, source_model)
    allocated = journal is not None and journal["config"]["allocation"] != "uniform"
    table = functools.cache(lambda: graded if graded is not None else graded_samples(run, source_model))
    samples_per_problem = _samples_per_problem(run, source_model, samples_per_problem, budget,
                                               allocated=allocated, graded=table)
    match = _resolve_number_match(run, number_matched_to, budget, source_model)
    if match.samples_per_problem is not None:
        if match.samples_per_problem > samples_per_problem:
            raise ValueError(
                f"number_matched_to={number_matched_to!r} asks for {match.samples_per_problem} samples per problem, "
                f"more than the {samples_per_problem} {source_model!r} has at this budget"
            )
        samples_per_problem = match.samples_per_problem

    rows = below_budget(table(), samples_per_problem).to_pylist()
    short = 0 if allocated else _count_short_problems(rows, samples_per_problem)
    if short:
        raise ValueError(
            f"{run.samples_dir(source_model)}: {short} problem(s) have fewer than {samples_per_problem} samples; "
            "finish sampling at this budget first"
        )
    available = {r["problem_id"] for r in rows}
    if judge_filter:
        judge_name = judge_filter if isinstance(judge_filter, str) else None
        verdicts = _judge_verdicts(run, source_model, judge_name)
        rows = apply_judge_filter(rows, verdicts, source=str(run.judgments_path(source_model)))
    chosen = select_examples(
        rows,
        samples_per_problem=samples_per_problem,
        max_per_problem=max_per_problem,
        dedupe=dedupe,
        number_matched_to=match.examples,
        seed=seed,
    )

    problems = _problems_by_id(run)
    records = _to_records(chosen, problems, prompt, source_model=source_model, budget=budget,
                          samples_per_problem=samples_per_problem, run=run)
    if name is None:
        name = default_sft_name(
            source_model, budget=budget, samples_per_problem=samples_per_problem, max_per_problem=max_per_problem,
            dedupe=dedupe, judge_filter=bool(judge_filter),
        ) + match.label
    path = Path(out_dir) if out_dir is not None else run.sft_dir(name)
    covered = len({r["problem_id"] for r in chosen})
    result = SFTBuildResult(path=path, problems_covered=covered, examples=len(chosen),
                            mean_per_problem=len(chosen) / covered if covered else 0.0,
                            problems_total=len(available), samples_per_problem=samples_per_problem)
    meta = {
        "source_model": source_model,
        "budget": budget,
        "samples_per_problem": samples_per_problem,
        "max_per_problem": max_per_problem,
        "dedupe": dedupe,
        "judge_filter": judge_filter,
        "number_matched_to": None if number_matched_to is None else str(number_matched_to),
        "seed": seed,
        "prompt_configs": {d: _prompt_record(c) for d, c in records.prompt_configs.items()},
        "prompt_format": records.prompt_format,
        "counts": result.to_dict(),
    }
    _save_dataset(records.rows, path, meta)
    return result


def _samples_per_problem(run: RunDir, source_model: str, samples_per_problem: int | None, budget: int | None, *,
                         allocated: bool, graded) -> int:
    """S for the set: given, or resolved from the plan's ``budget`` (both: they must agree); a model
    sampled by an allocation policy defaults to all it has (its counts differ per problem)."""
    if allocated and samples_per_problem is None and budget is None:
        samples_per_problem = 1 + (pc.max(graded().column("sample_idx")).as_py() or 0)
    if samples_per_problem is None and budget is None:
        raise ValueError("give budget= (SE samples per problem, resolved via plan.json) or samples_per_problem=")
    if budget is not None:
        planned = resolve_samples_per_problem(run, source_model, budget)
        if samples_per_problem is not None and samples_per_problem != planned:
            raise ValueError(
                f"samples_per_problem={samples_per_problem} contradicts the plan: budget {budget} gives "
                f"{source_model!r} {planned} samples per problem"
            )
        samples_per_problem = planned
    assert samples_per_problem is not None
    return samples_per_problem


def _count_short_problems(rows: list[dict[str, Any]], samples_per_problem: int) -> int:
    """Problems with fewer than ``samples_per_problem`` of ``rows`` (rows within the budget)."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["problem_id"]] += 1
    return sum(1 for c in counts.values() if c < samples_per_problem)


@dataclass(frozen=True)
class _NumberMatch:
    samples_per_problem: int | None = None  # use only this many samples per problem (the paper's control)
    examples: int | None = None  # subsample to this many examples
    label: str = ""  # name suffix


def _resolve_number_match(
    run: RunDir, number_matched_to: int | str | Path | None, budget: int | None, source_model: str
) -> _NumberMatch:
    """Interpret ``number_matched_to``: an int → that many examples; the other model of the plan →
    its samples per problem at ``budget`` (the paper's number-matched control: WC data with SE's
    sample count); another SFT dataset (name under ``sft/`` or path) → its number of examples."""
    if number_matched_to is None:
        return _NumberMatch()
    if isinstance(number_matched_to, int) or str(number_matched_to).isdigit():
        count = int(number_matched_to)
        return _NumberMatch(examples=count, label=f"-n{count}")
    text = str(number_matched_to)
    candidate = Path(text)
    if not (candidate / SFT_META_FILE).exists():
        candidate = run.sft_dir(text)
    if (candidate / SFT_META_FILE).exists():
        count = int(read_json(candidate / SFT_META_FILE)["counts"]["examples"])
        return _NumberMatch(examples=count, label=f"-n{count}")
    if run.plan_path.exists():
        if budget is None:
            raise ValueError(f"number_matched_to={text!r} (a model) needs budget= to look up its sample count")
        if model_key(text) == model_key(source_model):
            raise ValueError(f"number_matched_to={text!r} is the source model itself")
        try:
            count = resolve_samples_per_problem(run, text, budget)
        except ValueError as exc:
            raise ValueError(f"number_matched_to={text!r}: not an SFT dataset in {run.sft_root} and {exc}") from exc
        return _NumberMatch(samples_per_problem=count, label=f"-nm{count}")
    raise FileNotFoundError(
        f"number_matched_to={text!r}: neither an SFT dataset (looked in {candidate}) nor, without a plan.json, a model"
    )


def _problems_by_id(run: RunDir) -> dict[str, Any]:
    return load_problems(run)


def sft_prompt_config(dataset: str):
    """The default prompt of SFT data: the dataset's evaluation prompt (style, instruction, system)
    without few-shot exemplars. The paper samples few-shot; a fine-tuned model has learnt the format
    and is trained and evaluated zero-shot, which also keeps training sequences short."""
    from flopmatch.prompts import default_prompt_config

    return default_prompt_config(dataset).model_copy(update={"shots": 0, "exemplars": ()})


@dataclass
class _Records:
    rows: list[dict[str, Any]]
    prompt_configs: dict[str, Any]  # dataset -> the PromptConfig its prompts were built with
    prompt_format: str  # "chat" | "text" | "empty"


def _to_records(
    chosen: list[dict[str, Any]],
    problems: dict[str, Any],
    prompt_config: Any,
    *,
    source_model: str,
    budget: int | None,
    samples_per_problem: int,
    run: RunDir,
) -> _Records:
    from flopmatch.prompts import build_prompt

    rows: list[dict[str, Any]] = []
    formats: set[str] = set()
    configs: dict[str, Any] = {}
    for row in chosen:
        problem = problems.get(row["problem_id"])
        if problem is None:
            raise ValueError(
                f"{run.problems_dir}: sample problem_id={row['problem_id']!r} is not among the run's problems"
            )
        if problem.dataset not in configs:
            configs[problem.dataset] = prompt_config if prompt_config is not None else sft_prompt_config(problem.dataset)
        rendered = build_prompt(problem, configs[problem.dataset])
        text = row["text"]
        if isinstance(rendered, str):
            formats.add("text")
            record = {
                "messages": [{"role": "user", "content": rendered}, {"role": "assistant", "content": text}],
                "prompt": rendered,
                "completion": text,
            }
        else:
            formats.add("chat")
            prompt_messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in rendered]
            assistant = {"role": "assistant", "content": text}
            record = {"messages": [*prompt_messages, assistant], "prompt": prompt_messages, "completion": [assistant]}
        record.update(
            source_model=source_model,
            problem_id=row["problem_id"],
            sample_idx=int(row["sample_idx"]),
            seed=int(row["seed"]) if row["seed"] is not None else None,
            budget=budget,
            samples_per_problem=samples_per_problem,
        )
        rows.append(record)
    if len(formats) > 1:
        raise ValueError("the prompt config gives raw-text prompts for some problems and chat messages for others")
    return _Records(rows=rows, prompt_configs=configs, prompt_format=formats.pop() if formats else "empty")


def _save_dataset(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    """``save_to_disk`` into a temporary sibling directory, then swap it in (a reader never sees half a dataset)."""
    from datasets import Dataset, Features, Value

    if rows:
        dataset = Dataset.from_list(rows)
    else:
        features = Features(
            {
                "messages": [{"role": Value("string"), "content": Value("string")}],
                "prompt": Value("string"),
                "completion": Value("string"),
                "source_model": Value("string"),
                "problem_id": Value("string"),
                "sample_idx": Value("int64"),
                "seed": Value("int64"),
                "budget": Value("int64"),
                "samples_per_problem": Value("int64"),
            }
        )
        dataset = Dataset.from_dict({k: [] for k in features}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary directory
    try:
        dataset.save_to_disk(str(tmp))
        write_json(meta, tmp / SFT_META_FILE)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{tmp.name[-8:]}")
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_sft(path: str | Path):
    """Load an SFT dataset written by :func:`build_sft` (a ``datasets.Dataset``)."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no SFT dataset directory")
    return load_from_disk(str(path))


def sft_meta(path: str | Path) -> dict[str, Any]:
    """The build record of an SFT dataset (empty dict for datasets not built by flopmatch)."""
    meta_path = Path(path) / SFT_META_FILE
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}
