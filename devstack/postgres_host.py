"""Where the private Postgres lives on this machine and as whom it runs: its directories
(reachable by the postgres user when we are root), that user, and the binaries."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from devstack.errors import StackError
from devstack.layout import Layout
from devstack.processes import clean_env, output_tail, run

_PG_FALLBACK_BASE = Path("/var/tmp/cachegw-devstack")


class PostgresHost:
    """The directories, user and binaries of a :class:`~devstack.stack.Stack`'s
    private Postgres."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.config = layout.config
        self._is_root = os.geteuid() == 0
        self._pg_bin_cache: Path | None = None

    @property
    def pg_dir(self) -> Path:
        """``root/pg``; or, as root when the postgres user cannot enter the directories above
        ``root`` (a checkout under a 0700 home or temp dir), a directory of its own under
        ``/var/tmp/cachegw-devstack`` that ``root/pg`` links to."""
        local = self.layout.root / "pg"
        if local.is_symlink():
            return Path(os.readlink(local))
        if not self._is_root or self._postgres_can_reach(self.layout.root):
            return local
        digest = hashlib.sha256(str(self.layout.root).encode()).hexdigest()[:16]
        return _PG_FALLBACK_BASE / digest / "pg"

    def _postgres_can_reach(self, path: Path) -> bool:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            return True  # created later; the check in _prepare_pg_dirs reports what it finds
        groups = set(os.getgrouplist("postgres", entry.pw_gid))
        return all(
            _can_traverse(parent.stat(), entry.pw_uid, groups)
            for parent in reversed(path.parents)
            if parent.exists()
        )

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    def pg_bin(self) -> Path:
        if self._pg_bin_cache is None:
            found = self.config.pg_bin or find_pg_bin()
            if found is None:
                raise StackError(
                    "Postgres binaries not found (no /usr/lib/postgresql/*/bin/pg_ctl, no pg_ctl "
                    "on PATH); install postgresql or set CACHEGW_PG__DSN to use an external one"
                )
            self._pg_bin_cache = found
        return self._pg_bin_cache

    def as_pg_user(self, cmd: Sequence[str]) -> list[str]:
        """Run as the postgres user when we are root (Postgres refuses to run as root)."""
        if self._is_root:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def pg_env(self) -> dict[str, str]:
        env = clean_env("PG")
        env.setdefault("LC_ALL", "C")
        return env

    def prepare_dirs(self) -> None:
        """Create root/pg; as root, hand it to the postgres user and make the path reachable."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        pg_dir = self.pg_dir
        if pg_dir != self.layout.root / "pg":
            pg_dir.parent.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            pg_dir.parent.mkdir(mode=0o755, exist_ok=True)
            local = self.layout.root / "pg"
            if local.is_dir() and not local.is_symlink() and not any(local.iterdir()):
                local.rmdir()  # left by an attempt that found the path unreachable
            if not local.is_symlink():
                local.symlink_to(pg_dir)
        pg_dir.mkdir(exist_ok=True)
        if not self._is_root:
            return
        self._ensure_postgres_user()
        entry = pwd.getpwnam("postgres")
        uid, gid = entry.pw_uid, entry.pw_gid
        groups = set(os.getgrouplist("postgres", gid))
        # The given root is the stack's to open up; its ancestors are not: report them.
        for parent in reversed(
            pg_dir.parent.parents if pg_dir != self.layout.root / "pg" else self.layout.root.parents
        ):
            st = parent.stat()
            if not _can_traverse(st, uid, groups):
                raise StackError(
                    f"the postgres user cannot reach {self.layout.root}: {parent} has mode "
                    f"{st.st_mode & 0o7777:04o}; choose a --dir under a directory others may "
                    f"enter, or allow it (chmod o+x {parent})"
                )
        for directory in (
            (pg_dir.parent, pg_dir)
            if pg_dir != self.layout.root / "pg"
            else (self.layout.root, pg_dir)
        ):
            st = directory.stat()
            if st.st_mode & 0o755 != 0o755:
                directory.chmod((st.st_mode | 0o755) & 0o7777)
        if self.pg_dir.stat().st_uid != uid or (
            self.pg_data.exists() and self.pg_data.stat().st_uid != uid
        ):
            for path in [self.pg_dir, *self.pg_dir.rglob("*")]:
                os.lchown(path, uid, gid)

    def _ensure_postgres_user(self) -> None:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            with self.layout.step("postgres: created system user postgres"):
                proc = run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "postgres"])
                if proc.returncode != 0:
                    raise StackError(f"useradd postgres failed:\n{output_tail(proc)}") from None


def _can_traverse(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def find_pg_bin() -> Path | None:
    """The highest-version ``/usr/lib/postgresql/<v>/bin`` with pg_ctl, else pg_ctl on PATH."""

    def version_key(path: Path) -> tuple[int, ...]:
        numbers = re.findall(r"\d+", path.parent.name)
        return tuple(int(n) for n in numbers)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").is_file()]
    if candidates:
        return max(candidates, key=version_key)
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None
