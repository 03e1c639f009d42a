"""Studies for the studio tests, built from the images installed packages ship.

File names are deliberately loud (`LEAKREAL...`, `LEAKSYNTH...`, generator `leakgen...`)
so the blinding tests can search every served byte for them.
"""
from __future__ import annotations

import contextlib
import csv
import pathlib
import shutil

from study_fixtures import write_images

REAL_MARK = "LEAKREAL"
SYNTH_MARK = "LEAKSYNTH"
GEN_MARK = "leakgen-x9"


def write_loud_manifest(root: pathlib.Path, n_cases: int = 10) -> tuple[pathlib.Path, list[dict]]:
    """root/cases.csv with `n_cases` rows (half real, half synthetic) whose file names and
    generator are easy to search for; returns (manifest, rows)."""
    raw = root / "raw"
    rows = write_images(raw, synthetic_per_real=1, generators=(GEN_MARK,))
    real = [r for r in rows if r["source"] == "real"]
    synth = [r for r in rows if r["source"] == "synthetic"]
    n_real = n_cases // 2
    chosen = real[:n_real] + synth[: n_cases - n_real]
    out_rows = []
    for i, r in enumerate(chosen):
        src = raw / r["path"]
        mark = REAL_MARK if r["source"] == "real" else SYNTH_MARK
        name = f"{mark}_{i:02d}_{src.name}"
        dst = root / "images" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        out_rows.append({**r, "path": f"images/{name}",
                         "generator": GEN_MARK if r["source"] == "synthetic" else ""})
    shutil.rmtree(raw)
    manifest = root / "cases.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "source", "modality", "prompt", "generator"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(out_rows)
    return manifest, out_rows


def make_loud_study(tmp_path: pathlib.Path, name: str = "ten", *, n_cases: int = 10,
                    tasks=("turing",), training_cases: int = 0, size: int = 96,
                    readers=("dr-a",)):
    """A study in tmp_path/studio.db; returns (db_path, rows, {reader: token})."""
    db_path = tmp_path / "studio.db"
    rows, tokens = add_loud_study(db_path, tmp_path / "data", name, n_cases=n_cases,
                                  tasks=tasks, training_cases=training_cases, size=size,
                                  readers=readers)
    return db_path, rows, tokens


def add_loud_study(db_path: pathlib.Path, data_root: pathlib.Path, name: str, *,
                   n_cases: int = 4, tasks=("turing",), training_cases: int = 0,
                   size: int = 96, readers=()):
    """Study `name` in `db_path` (created if absent) from a loud manifest written under
    `data_root`; `readers=()` leaves it a draft. Returns (rows, {reader: token})."""
    from studies import readers as readers_mod
    from studies.design import StudyOptions
    from studies.ingest import create_study

    manifest, rows = write_loud_manifest(data_root, n_cases)
    create_study(db_path, name, manifest=manifest, size=size,
                 options=StudyOptions(tasks=tuple(tasks), training_cases=training_cases, seed=7))
    # Loud test data may fail the leak audit: acknowledged, as a researcher must to invite.
    from study_fixtures import acknowledge_fixture_leak

    acknowledge_fixture_leak(db_path, name)
    tokens = {r: readers_mod.invite(db_path, name, r) for r in readers}
    return rows, tokens


def leak_needles(rows: list[dict]) -> list[str]:
    """Strings that must never reach a reader's browser."""
    needles = {REAL_MARK, SYNTH_MARK, GEN_MARK}
    for r in rows:
        stem = pathlib.Path(r["path"]).name
        needles.add(stem)
        needles.add(pathlib.Path(stem).stem)
    return sorted(needles)


__all__ = ["GEN_MARK", "REAL_MARK", "SYNTH_MARK", "add_loud_study", "leak_needles",
           "make_loud_study", "serve_studio", "write_loud_manifest"]


@contextlib.contextmanager
def serve_studio(db_path, *, password: str = "pw-test", writer_process: bool = True,
                 **build_kwargs):
    """The whole studio app for `db_path` on a free port (admin `admin`/`password`), with
    its writer process as `medisyn studio` runs it: yields (base url, {reader event name:
    fn index}) and stops the server and the writer after."""
    from studio.web import app as app_mod
    from studio.web import auth

    creds = auth.AdminCredentials.from_password("admin", password, "env")
    app = app_mod.build_app(db_path, admin_auth=auth.AdminAuth(creds), **build_kwargs)
    ids = {f.name: i for i, f in app.state.reader_blocks.fns.items()}
    if writer_process:
        assert app_mod.start_writer(db_path)
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    try:
        yield server.url, ids
    finally:
        server.stop()
        app_mod.stop_writer()


def from_address(address, fn, *args):
    """Call `fn(*args)` as if the request came from client `address` (the login lockout keys on it)."""
    from studio.web import auth

    token = auth.CLIENT_ADDRESS.set(address)
    try:
        return fn(*args)
    finally:
        auth.CLIENT_ADDRESS.reset(token)
