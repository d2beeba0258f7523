"""Hot reload: what a new config changes, and what it may change while running.

Only the camera list is applied live: cameras that were added are started, removed ones are
stopped, changed ones are restarted, and unchanged ones are not touched (their frame `seq`
continues, no reconnect). Other sections (model, kafka, batching, ...) take effect at the next
start; a reload that changes them says so in the log.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import CameraConfig, Config


@dataclass(frozen=True)
class ReloadPlan:
    """Camera changes of a reload, in the new file's order, and sections that need a restart."""

    added: tuple[CameraConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[CameraConfig, ...]  # the new settings of cameras whose settings differ
    needs_restart: tuple[str, ...]  # top-level sections other than cameras that differ

    @property
    def empty(self) -> bool:
        """Nothing to do for the running daemon."""
        return not (self.added or self.removed or self.changed)


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare the running config with a freshly loaded one."""
    old = {c.id: c for c in running.cameras}
    fresh = {c.id: c for c in new.cameras}
    sections = [name for name in type(new).model_fields if name != "cameras"
                and getattr(running, name) != getattr(new, name)]
    return ReloadPlan(
        added=tuple(c for c in new.cameras if c.id not in old),
        removed=tuple(cam for cam in old if cam not in fresh),
        changed=tuple(c for c in new.cameras if c.id in old and old[c.id] != c),
        needs_restart=tuple(sections),
    )
