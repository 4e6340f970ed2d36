"""Preloaded by the grading fork server: every worker forks with math-verify imported and warm."""

from flopmatch.grading.worker import warm_up

warm_up()
