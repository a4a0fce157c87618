"""The Prefect step runner: each step of a sequence (cityloop.core.steps) as one task run.

The sequences themselves (build a model version, release one, a loop round) live in the wings;
a flow hands them `as_task`, so the Prefect UI shows every step by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

T = TypeVar("T")


def as_task(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` as the task run `name` (no result cache: the sequences are
    idempotent on their own, and their inputs are paths and ids, not data worth hashing)."""
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False)(*args, **kwargs)
