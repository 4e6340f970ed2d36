"""What the training paradigms need: the SFT sets and the fine-tuning runs of a study at its budgets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flopmatch.study.config import StudyConfig

PARADIGM_SHORT = {"knowledge_distillation": "kd", "self_improvement": "si", "weak_to_strong": "w2s"}
#: Which model each paradigm fine-tunes (paper.md: a separate student; WC itself; SE itself).
PARADIGM_STUDENT = {"knowledge_distillation": "student", "self_improvement": "wc", "weak_to_strong": "se"}


@dataclass(frozen=True)
class SFTSet:
    """One training set: a model's correct solutions at one budget (``kind`` wc, se, wc_number_matched, or
    ``<role>_<policy>`` for an allocated set, e.g. wc_adaptive: every correct solution the policy found
    within the budget; ``samples_per_problem`` is then the uniform set's, whose FLOPs it may spend)."""

    name: str
    kind: str
    role: str  # whose samples: wc | se
    budget: int  # SE samples per problem of the budget
    samples_per_problem: int
    allocation: str = "uniform"  # the policy that drew the samples (flopmatch.allocation_study)

    def identity(self) -> dict[str, object]:
        """Hashed into a job's digest; a uniform set hashes as before allocation policies existed."""
        fields = {"name": self.name, "kind": self.kind, "role": self.role, "budget": self.budget,
                  "samples_per_problem": self.samples_per_problem}  # fmt: skip
        return fields if self.allocation == "uniform" else {**fields, "allocation": self.allocation}


@dataclass(frozen=True)
class TrainJob:
    """One fine-tuning run: a paradigm's student trained on one SFT set with one training seed.

    ``name`` is ``<paradigm>-<set>`` for the study's default seed (the layout of one-seed runs, so adding
    seeds to a study reuses them) and ``<paradigm>-<set>-s<seed>`` for every other seed."""

    name: str
    paradigm: str
    student_role: str  # student | wc | se
    data: SFTSet
    seed: int = 0

    def identity(self) -> dict[str, object]:
        """What names the job apart from its seed (the seed is hashed with the training config): hashing
        this keeps the fingerprints of runs made before seeds existed."""
        return {"name": self.name, "paradigm": self.paradigm, "student_role": self.student_role,
                "data": self.data.identity()}  # fmt: skip


def sft_sets(config: StudyConfig, budgets: Sequence[tuple[int, int]]) -> list[SFTSet]:
    """Every SFT set the enabled paradigms need, given the plan's (se_samples, wc_samples) budgets."""
    out: list[SFTSet] = []
    allocations = config.paradigms.allocations
    for se_n, wc_n in budgets:
        if "uniform" in allocations:
            out.append(SFTSet(f"wc-b{se_n}", "wc", "wc", se_n, wc_n))
            out.append(SFTSet(f"se-b{se_n}", "se", "se", se_n, se_n))
            if config.paradigms.number_matched:
                out.append(SFTSet(f"wc-nm-b{se_n}", "wc_number_matched", "wc", se_n, se_n))
        for policy in (a for a in allocations if a != "uniform"):
            for role, count in (("wc", wc_n), ("se", se_n)):
                kind = f"{role}_{policy.replace('-', '_')}"  # flopmatch.allocation_study.data_kind
                out.append(SFTSet(f"{role}-{policy}-b{se_n}", kind, role, se_n, count, policy))
    return out


def train_jobs(config: StudyConfig, budgets: Sequence[tuple[int, int]]) -> list[TrainJob]:
    """All three paradigms at every budget (each: WC data vs SE data), plus the number-matched control
    for the paradigms listed in ``paradigms.number_matched``, and WC and SE data of each allocation policy
    in ``paradigms.allocations`` besides uniform, once per training seed."""
    sets = {s.name: s for s in sft_sets(config, budgets)}
    default_seed = config.training.default_seed(config.seed)
    allocations = config.paradigms.allocations
    jobs: list[TrainJob] = []
    for paradigm in config.paradigms.enabled():
        short = PARADIGM_SHORT[paradigm]
        for se_n, _ in budgets:
            kinds = ["se", "wc"] if "uniform" in allocations else []
            if "uniform" in allocations and paradigm in config.paradigms.number_matched:
                kinds.append("wc-nm")
            kinds += [f"{role}-{policy}" for policy in allocations if policy != "uniform" for role in ("wc", "se")]
            for kind in kinds:
                data = sets[f"{kind}-b{se_n}"]
                for seed in config.training.seed_list(config.seed):
                    suffix = "" if seed == default_seed else f"-s{seed}"
                    name = f"{short}-{data.name}{suffix}"
                    jobs.append(TrainJob(name, paradigm, PARADIGM_STUDENT[paradigm], data, seed))
    return jobs
