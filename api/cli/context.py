"""The components a command uses, closed when the command ends.

Closing anchors the command's audit events in the checkpoint sink before the process
exits (a short-lived writer leaves no un-anchored event), then closes its connections.
"""

from __future__ import annotations

import click

from api.settings import Settings
from api.wiring import Components, build

__all__ = ["command_components"]


def command_components(settings: Settings | None = None) -> Components:
    parts = build(settings or Settings.from_env())
    context = click.get_current_context()
    context.call_on_close(parts.engine.dispose)
    context.call_on_close(parts.trail.close)  # runs first: callbacks run last-registered first
    return parts
