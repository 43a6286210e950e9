"""Who may see, stop or delete a run or a job: one function of (who is asking, the thing), which
the job runner, the pages and the CLI all call. On a local install every run is its one user's;
on a shared server a workspace sees and changes its own runs, a teacher every run, and with the
class view on everyone sees (never stops or deletes) every run.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mnist_lab.runs.store import LOCAL_WORKSPACE

ACTIONS = ("see", "stop", "delete")
T = TypeVar("T")


@dataclass(frozen=True)
class Asker:
    """Who is asking: a browser session's workspace and role, or the local user (the CLI)."""

    workspace: str = LOCAL_WORKSPACE
    shared: bool = False  # a shared server: each workspace its own runs
    teacher: bool = False  # gave the teacher token: sees, stops and deletes every run
    class_view: bool = False  # the server lets everyone see (not stop or delete) every run

    @property
    def scope(self) -> str | None:
        """The one workspace whose runs this asker may see, or None for every run."""
        return None if may(self, "see", None) else self.workspace


LOCAL = Asker()  # the user of a local install, and the CLI


def workspace_of(thing: Any) -> str:
    """The workspace a run or job belongs to: `thing` is a workspace name, a row (a mapping with
    'workspace'), or an object with `.workspace` (a JobView); a run without one is the local user's."""
    if isinstance(thing, Mapping):
        thing = thing.get("workspace")
    elif not isinstance(thing, str) and thing is not None:
        thing = getattr(thing, "workspace", None)
    return thing if isinstance(thing, str) and thing else LOCAL_WORKSPACE


def may(asker: Asker, action: str, thing: Any) -> bool:
    """Whether `asker` may `action` ('see', 'stop' or 'delete') the run or job `thing` (anything
    `workspace_of` reads; None asks about every run at once)."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action '{action}'; choose one of {', '.join(ACTIONS)}.")
    if not asker.shared or asker.teacher or (action == "see" and asker.class_view):
        return True
    return thing is not None and workspace_of(thing) == asker.workspace


def allowed(asker: Asker, action: str, things: Iterable[T]) -> list[T]:
    """The `things` that `asker` may `action`, in their order."""
    return [thing for thing in things if may(asker, action, thing)]
