"""A sequence written once, run directly or step by step under an orchestrator.

The platform's sequences (build a model version, release one to the edge) are plain functions
that call each of their steps through a `StepRunner`: `run_direct` calls the step (the loop, the
tests, the CLI's direct paths); the Prefect flows pass a runner that makes each step a task run,
so the Prefect UI shows every step while the order of the steps lives in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StepRunner(Protocol):
    """Runs `fn(*args, **kwargs)` as the step called `name` and returns its result."""

    def __call__(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


def run_direct(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the step in-process (no orchestrator)."""
    return fn(*args, **kwargs)
