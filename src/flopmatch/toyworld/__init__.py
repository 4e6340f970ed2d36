"""The toy world: a laptop-sized reasoning world with exact step checking and two tiny local models.

- ``generate_problems`` / ``load_problems``: seeded multi-step arithmetic word problems (train/test
  splits by seed) as ``flopmatch.problems.Problem`` records, with difficulty ``Knobs``.
- ``format_prompt``: the raw prompt the toy models continue; solutions are one step per line
  (``16 - 3 - 4 = 9``) and a final ``Answer: N``.
- ``check_solution``: the exact step checker, ground truth for "right answer, wrong reasoning".
- ``ensure_model("wc" | "se")``: a cached, locally trained ``LlamaForCausalLM`` in HF format; WC has
  about a third of SE's parameters (``PARAMS``).

Only light modules are imported here; torch and transformers load when a model is trained or used.
"""

from flopmatch.toyworld.checker import StepCheck, check_solution, extract_answer, problem_quantities
from flopmatch.toyworld.generator import (
    DATASET,
    DEFAULT_SIZES,
    FAMILIES,
    SPLIT_SEEDS,
    Knobs,
    generate_problems,
    load_problems,
)
from flopmatch.toyworld.models import (
    PARAMS,
    SPECS,
    ToyModelSpec,
    ensure_model,
    format_prompt,
    model_path,
)
from flopmatch.toyworld.noise import NoiseConfig

__all__ = [
    "DATASET",
    "DEFAULT_SIZES",
    "FAMILIES",
    "PARAMS",
    "SPECS",
    "SPLIT_SEEDS",
    "Knobs",
    "NoiseConfig",
    "StepCheck",
    "ToyModelSpec",
    "check_solution",
    "ensure_model",
    "extract_answer",
    "format_prompt",
    "generate_problems",
    "load_problems",
    "model_path",
    "problem_quantities",
]
