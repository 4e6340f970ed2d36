"""One answer, for every test module, to "can the slow tests use the offline Qwen2.5-Coder pair here?".

The answer is "their PyPI part packages are installed" (``make offline-models``): tests prepare the
models into the session's private cache (conftest.py), never from ``~/.cache/flopmatch``. This skip is
the one tests/skip_allowlist.txt accepts.
"""

from __future__ import annotations

import pytest

QWEN_05 = "qwen2.5-coder-0.5b-instruct"
QWEN_15 = "qwen2.5-coder-1.5b-instruct"
SKIP_REASON = "offline Qwen2.5-Coder GGUF parts not installed (make offline-models)"


def offline_pair_installed() -> bool:
    from flopmatch import models

    return all(models.parts_installed(models.get_entry(name).gguf) for name in (QWEN_05, QWEN_15))


needs_offline_pair = pytest.mark.skipif(not offline_pair_installed(), reason=SKIP_REASON)
