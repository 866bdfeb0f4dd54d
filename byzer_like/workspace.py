"""The workspace: one folder that holds everything the service writes, and the allowed roots.

Everything byzer-like writes (catalog, saved tables, models it builds or trains, checkpoints,
job logs, the persistent cluster's temp dir) lives under the workspace root, `./byzer_workspace` by
default or `BYZER_LIKE_HOME`. Paths a user gives (model directories, SQL load/save paths) must
resolve, after following symlinks, inside one of the allowed roots: the workspace itself plus the
folders listed in `BYZER_LIKE_ALLOWED_ROOTS` (separated by `os.pathsep`).

A relative path starts from one of two places, and the face that takes the path says which
(`Workspace.resolve(..., relative_to=...)`): SQL's paths (`load`, `save`, `localModelDir`) start at
the workspace, as in Byzer; the command line's path arguments and the Python client's paths start at
the current directory, as in any shell or Python program. Both stay inside the allowed roots.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WorkspacePathError

HOME_ENV = "BYZER_LIKE_HOME"
ROOTS_ENV = "BYZER_LIKE_ALLOWED_ROOTS"
DEFAULT_DIRNAME = "byzer_workspace"
# Longest file name and path the usual file systems take (Linux: NAME_MAX, PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096
STAGING_SUFFIX = 40  # what a save adds to its target's name for its staging folder (session/io.py)
# `what` of the paths that are written as a whole (see Workspace.resolve's `replaces`)
WHOLE_WRITES = ("save path",)
# where a relative path starts (`Workspace.resolve`'s `relative_to`), as an error message names it
RELATIVE_TO = {"workspace": "the workspace", "cwd": "the current directory"}


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _strip_file_scheme(raw: str, what: str) -> str:
    """`file:///data/x` (Spark's and Byzer's spelling of a local path; `file://localhost/data/x` too) as the
    path `/data/x`; any other URL scheme (hdfs://, s3://, ...) is refused: byzer-like reads local paths only.
    Raises WorkspacePathError."""
    m = _URL.match(raw)
    if m is None:
        return raw
    if m.group(1).lower() != "file":
        raise WorkspacePathError(f"{what} {_shown(raw)} is a {m.group(1)}:// URL; byzer-like reads and writes local "
                                 "paths only: give a local path (file:///... or a plain one) under an allowed root, copying the "
                                 "data there first")
    rest = raw[m.end():]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost"):]
    if not rest.startswith("/"):
        raise WorkspacePathError(f"{what} {_shown(raw)} names a host; a file:// URL here is file:///<absolute path>")
    return rest


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

    def resolve(self, user_path: str | os.PathLike, *, what: str = "path", replaces: bool | None = None,
                relative_to: str = "workspace") -> Path:
        """Resolve a user-given path and refuse it unless it lies inside an allowed root.

        `relative_to`: where a relative path starts: `"workspace"` (SQL's rule, Byzer's) or `"cwd"`,
        the current directory (the rule of the command line's arguments and the Python client's
        paths). An absolute path is taken as it is. Symlinks are followed before the check.
        `replaces`: the path is written as a whole (a `save` target, which is replaced and whose
        parent gets a staging folder), so an allowed root itself is refused: saving onto the
        workspace would delete it and write beside it. Left out, it is true for `what="save path"`.

        Raises WorkspacePathError naming the path, what it resolved to, from where and the roots."""
        if relative_to not in RELATIVE_TO:
            raise ValueError(f"relative_to must be one of {sorted(RELATIVE_TO)}, not {relative_to!r}")
        raw = os.fspath(user_path)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not raw.strip() or "\x00" in raw:
            problem = "a NUL byte" if "\x00" in raw else "nothing but blanks" if raw else "nothing"
            raise WorkspacePathError(f"{what} {_shown(raw)} is not a valid path (it holds {problem}); "
                                     f"give a file or folder, relative to {RELATIVE_TO[relative_to]} "
                                     "or under an allowed root")
        raw = _strip_file_scheme(raw, what)
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
            raise WorkspacePathError(f"{what} {_shown(raw)} starts with the home folder of an unknown user; give a "
                                     f"path relative to {RELATIVE_TO[relative_to]} or under an allowed root") from None
        relative = not p.is_absolute()
        try:
            base = self._base(relative_to) if relative else None
        except OSError:  # the current directory was removed
            raise WorkspacePathError(f"{what} {_shown(raw)} is relative, but the current directory no longer "
                                     "exists; give an absolute path") from None
        real = Path(os.path.realpath(base / p if base is not None else p))
        for root in self.allowed_roots:
            if real == root and replaces:
                raise WorkspacePathError(
                    f"{what} {_shown(raw)} is the allowed root {root} itself, which a save would replace whole; "
                    "save into a folder under it instead (e.g. out/answers)"
                )
            if real == root or real.is_relative_to(root):
                return real
        roots = ", ".join(str(r) for r in self.allowed_roots)
        start = f" (a relative path starts at {RELATIVE_TO[relative_to]}, {base})" if relative else ""
        raise WorkspacePathError(
            f"{what} {_shown(raw)} resolves to {_clip(str(real))}{start}, outside the allowed roots ({roots}); "
            f"put it under the workspace or add its folder to {ROOTS_ENV}{self._other_start(p, relative_to)}"
        )

    def _base(self, relative_to: str) -> Path:
        return self.root if relative_to == "workspace" else Path.cwd()

    def _other_start(self, p: Path, relative_to: str) -> str:
        """A hint for a relative path that exists inside the roots when read from the other start."""
        if p.is_absolute():
            return ""
        other = "cwd" if relative_to == "workspace" else "workspace"
        try:
            there = Path(os.path.realpath(self._base(other) / p))
        except OSError:  # the current directory is gone
            return ""
        if not there.exists() or not any(there == r or there.is_relative_to(r) for r in self.allowed_roots):
            return ""
        return f"; from {RELATIVE_TO[other]} it would be {_clip(str(there))}: give that path"


def _shown(text: str, limit: int = 200) -> str:
    """A user's path in a message: quoted, control characters escaped, at most `limit` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bare_name(text: str | os.PathLike) -> bool:
    """Whether `text` is a bare word (`smollm2`): no folder part, no `.gguf` suffix, not `.` or `..`. Such a word
    names a packaged model (`convert.gguf.PACKAGED`), never a path relative to the current folder."""
    s = os.fspath(text)
    return bool(s) and "/" not in s and os.sep not in s and not s.endswith(".gguf") and s not in (".", "..")
