"""Who may see, stop or delete a run or a job: one function of (who is asking, the thing), which
the job runner, the pages and the CLI all call. On a local install every run is its one user's;
on a shared server a workspace (a signed-in student's, the teacher's, a demo visitor's) sees and
changes its own runs, a teacher every run, and with the class view on everyone sees (never stops
or deletes) every run. In a public demo everyone also sees the examples, which no visitor changes.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mnist_lab.runs.store import LOCAL_WORKSPACE

ACTIONS = ("see", "stop", "delete", "class")  # "class": build the class's reports and exports, end the term
# Demo mode: the runs trained on the server by its operator (the CLI: the local workspace) are
# the examples every visitor sees and none may stop or delete.
EXAMPLES_WORKSPACE = LOCAL_WORKSPACE
T = TypeVar("T")


@dataclass(frozen=True)
class Asker:
    """Who is asking: a browser session's workspace and role, or the local user (the CLI)."""

    workspace: str = LOCAL_WORKSPACE  # the permission key of runs and jobs ("student:<id>", "teacher", ...)
    shared: bool = False  # a shared server (class or demo): each workspace its own runs
    teacher: bool = False  # signed in as the teacher: sees, stops and deletes every run
    class_view: bool = False  # the server lets everyone see (not stop or delete) every run
    demo: bool = False  # a public demo: the examples (EXAMPLES_WORKSPACE) are seen by all, changed by none
    student_id: str = ""  # the signed-in student's 学号 ('' for the teacher, a visitor, the local user)
    name: str = ""  # the signed-in person's 姓名 ('' for a visitor)

    @property
    def scope(self) -> tuple[str, ...] | None:
        """The workspaces whose runs this asker may see (its own, and the examples in a demo), or
        None for every run."""
        if may(self, "see", None):
            return None
        if not self.workspace:  # not signed in: nothing
            return ()
        if self.demo and self.workspace != EXAMPLES_WORKSPACE:
            return (self.workspace, EXAMPLES_WORKSPACE)
        return (self.workspace,)


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
    `workspace_of` reads; None asks about every run at once), or act on the whole class ('class',
    `thing` None: build every student's report, export the term's data, end the term)."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown action '{action}'; choose one of {', '.join(ACTIONS)}.")
    if not asker.shared or asker.teacher:
        return True
    if action == "class":  # the whole class's data: the teacher's and a local user's only
        return False
    if thing is not None and asker.demo and workspace_of(thing) == EXAMPLES_WORKSPACE:
        return action == "see"  # the examples: everyone's to see, nobody's to change
    if action == "see" and asker.class_view:
        return True
    # an asker with no workspace (not signed in) owns nothing, not even runs of an empty workspace
    return thing is not None and bool(asker.workspace) and workspace_of(thing) == asker.workspace


def allowed(asker: Asker, action: str, things: Iterable[T]) -> list[T]:
    """The `things` that `asker` may `action`, in their order."""
    return [thing for thing in things if may(asker, action, thing)]
