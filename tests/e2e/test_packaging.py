"""The wheel carries the migrations: ``pip install .`` (not only ``-e``) gives a working schema."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_ships_the_migrations_and_finds_them(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("durable_tq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for backend in ("sqlite", "postgres"):  # each backend's numbered files, all of them
        shipped = sorted(n for n in names if n.startswith(f"durable_tq/_migrations/{backend}/"))
        in_repo = sorted(p.name for p in (ROOT / "migrations" / backend).glob("*.sql"))
        assert [Path(n).name for n in shipped] == in_repo, backend
    assert not any(n.startswith("tests/") for n in names)  # tests stay out of the wheel

    # Import the package from the unpacked wheel, far from the repository, and migrate a file.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import sqlite3, durable_tq.backends.sqlite.migrate as m;"
        "print(m.migrations_dir());"
        "c = sqlite3.connect('x.db', isolation_level=None);"
        "print(len(m.apply_migrations(c)), m.current_version(c))"
    )
    ran = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {script}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    where, counts = ran.stdout.splitlines()
    assert where.startswith(str(site)) and "_migrations" in where
    sqlite_files = len(list((ROOT / "migrations" / "sqlite").glob("*.sql")))
    assert counts == f"{sqlite_files} {sqlite_files}"
