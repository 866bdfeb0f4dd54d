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
# Longest file name and path the usual file systems take (Linux: NAME_MAX, PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096
STAGING_SUFFIX = 40  # what a save adds to its target's name for its staging folder (engine/io.py)
# `what` of the paths that are written as a whole (see Workspace.resolve's `replaces`)
WHOLE_WRITES = ("save path",)


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

    def copy_own(self, source: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
        """Copy this project's own files (a file or a folder, e.g. the quick start's sample data) to
        `dest` inside the workspace without losing a file of the user's: a missing file is written, an
        identical one left alone, and a different one (the user's, or edited by the user) is kept as it
        is, beside which ours is written as `<name>.byzer-like-sample`. Returns one line per file kept,
        for the caller to show. Raises WorkspacePathError when `dest` is outside the allowed roots."""
        import filecmp
        import shutil

        src, out = Path(source), self.resolve(dest, what="copy target")
        notes: list[str] = []
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for f in files:
            target = out if src.is_file() else out / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(f, target)
            elif not (target.is_file() and filecmp.cmp(f, target, shallow=False)):
                beside = target.with_name(target.name + ".byzer-like-sample")
                shutil.copy2(f, beside)
                notes.append(f"kept your {target} as it is; the sample is beside it as {beside.name}")
        return notes

    def resolve(self, user_path: str | os.PathLike, *, what: str = "path", replaces: bool | None = None) -> Path:
        """Resolve a user-given path (relative ones against the workspace root) and refuse it
        unless it lies inside an allowed root.

        `replaces`: the path is written as a whole (a `save` target, which is replaced and whose
        parent gets a staging folder), so an allowed root itself is refused: saving onto the
        workspace would delete it and write beside it. Left out, it is true for `what="save path"`."""
        raw = os.fspath(user_path)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not raw.strip() or "\x00" in raw:
            problem = "a NUL byte" if "\x00" in raw else "nothing but blanks" if raw else "nothing"
            raise WorkspacePathError(f"{what} {_shown(raw)} is not a valid path (it holds {problem}); "
                                     "give a file or folder, relative to the workspace or under an allowed root")
        if replaces is None:
            replaces = what in WHOLE_WRITES
        # a save writes `.<name>.tmp-<32 hex digits>` beside its target first: its name must leave room for that
        name_max = NAME_MAX - STAGING_SUFFIX if replaces else NAME_MAX
        too_long = next((part for part in raw.split(os.sep) if len(os.fsencode(part)) > name_max), None)
        if too_long is not None or len(os.fsencode(raw)) > PATH_MAX:
            detail = f"a name in it is longer than {name_max} bytes" if too_long else f"it is longer than {PATH_MAX} bytes"
            raise WorkspacePathError(f"{what} {_shown(raw)} is not a valid path ({detail}); use a shorter one")
        try:
            p = Path(raw).expanduser()
        except RuntimeError:  # `~name` of a user this machine does not have
            raise WorkspacePathError(f"{what} {_shown(raw)} starts with the home folder of an unknown user; "
                                     "give a path relative to the workspace or under an allowed root") from None
        if not p.is_absolute():
            p = self.root / p
        real = Path(os.path.realpath(p))
        for root in self.allowed_roots:
            if real == root and replaces:
                raise WorkspacePathError(
                    f"{what} {_shown(raw)} is the allowed root {root} itself, which a save would replace whole; "
                    "save into a folder under it instead (e.g. out/answers)"
                )
            if real == root or real.is_relative_to(root):
                return real
        roots = ", ".join(str(r) for r in self.allowed_roots)
        raise WorkspacePathError(
            f"{what} {_shown(raw)} resolves to {_clip(str(real))}, outside the allowed roots ({roots}); "
            f"put it under the workspace or add its folder to {ROOTS_ENV}"
        )


def _shown(text: str, limit: int = 200) -> str:
    """A user's path in a message: quoted, control characters escaped, at most `limit` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
