"""Loaded at start-up by a child process whose PYTHONPATH starts with this folder (see tests/hold_points.py).

When ``FLOPMATCH_TEST_HOLD`` is ``module:attribute:marker``, the function ``module.attribute`` (a dotted
attribute such as ``Class.method`` works too) is wrapped: after its first call returns, the process
writes ``marker`` and then sleeps until it is killed. A SIGKILL test thus kills at a known point (one
shard on disk, one checkpoint saved) instead of racing the child's speed. Without the variable this
file does nothing.
"""

import os

_SPEC = os.environ.get("FLOPMATCH_TEST_HOLD")

if _SPEC:
    import functools
    import importlib
    import time
    from pathlib import Path

    _module_name, _attribute, _marker = _SPEC.split(":", 2)
    _owner = importlib.import_module(_module_name)
    *_path, _name = _attribute.split(".")
    for _part in _path:
        _owner = getattr(_owner, _part)
    _original = getattr(_owner, _name)

    @functools.wraps(_original)
    def _held(*args, **kwargs):
        result = _original(*args, **kwargs)
        Path(_marker).write_text(str(os.getpid()))
        while True:  # held here until the test kills the process group
            time.sleep(60)
        return result  # never reached

    setattr(_owner, _name, _held)
