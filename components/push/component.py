"""SharedVersionPusher: the stock Pusher whose exports of one model share a version."""

from __future__ import annotations

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.push import executor


class SharedVersionPusher(tfx.components.Pusher):
    """TFX's Pusher, versioned by the blessing (see :mod:`components.push.executor`)."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
