"""The workspace: one folder that holds everything the service writes, and the allowed roots.

Everything byzer-like writes (catalog, saved tables, models it builds or trains, checkpoints,
job logs, the persistent cluster's temp dir) lives under the workspace root, `./byzer_workspace` by
default or `BYZER_LIKE_HOME`. Paths a user gives (model directories, SQL load/save paths) must
resolve, after following symlinks, inside one of the allowed roots: the workspace itself plus the
folders listed in `BYZER_LIKE_ALLOWED_ROOTS` (separated by `os.pathsep`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WorkspacePathError

HOME_ENV = "BYZER_LIKE_HOME"
ROOTS_ENV = "BYZER_LIKE_ALLOWED_ROOTS"
DEFAULT_DIRNAME = "byzer_workspace"


@dataclass(frozen=True)
class Workspace:
    root: Path
    extra_roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Workspace":
        base = Path(root or os.environ.get(HOME_ENV) or Path.cwd() / DEFAULT_DIRNAME)
        extra = tuple(
            Path(p).expanduser().resolve() for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()
        )
        return cls(root=base.expanduser().resolve(), extra_roots=extra)

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        return (self.root, *self.extra_roots)

    def path(self, *parts: str) -> Path:
        """A folder or file inside the workspace (folders are created on demand by callers)."""
        return self.root.joinpath(*parts)

    def dir(self, *parts: str) -> Path:
        p = self.path(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def resolve(self, user_path: str | os.PathLike, *, what: str = "path") -> Path:
        """Resolve a user-given path (relative ones against the workspace root) and refuse it
        unless it lies inside an allowed root."""
        raw = os.fspath(user_path)
        if not raw or "\x00" in raw:
            raise WorkspacePathError(f"{what} {raw!r} is not a valid path")
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = self.root / p
        real = Path(os.path.realpath(p))
        for root in self.allowed_roots:
            if real == root or real.is_relative_to(root):
                return real
        roots = ", ".join(str(r) for r in self.allowed_roots)
        raise WorkspacePathError(
            f"{what} {raw!r} resolves to {real}, outside the allowed roots ({roots}); "
            f"put it under the workspace or add its folder to {ROOTS_ENV}"
        )
