"""Reader-study core benchmark.

1. Ingest throughput (images/s) of `create_study` for PNG, uncompressed DICOM and
   JPEG 2000 DICOM inputs, at --size (default 512): the per-image part (decode,
   letterbox, PNG encode, write) and the whole call (plus leak audit and transaction).
2. Latency of `next_case` + `submit` on a 100-reader x 2,000-case study, built directly in
   the database (2,000 small stimulus PNGs, cases, 100 readers invited through
   `readers.invite`, half of every reader's session pre-answered), measured from one
   client and from 8 and 32 concurrent client threads (p50/p95/p99 of `submit`, which
   is the write), twice: with the answers committed by the writer process
   (`studies.storage.writer_process`, as `medisyn studio` runs) and by the client threads
   themselves (group commit in one process).

Run: .venv/bin/python benchmarks/bench_study.py [--quick] [--latency-only] [--think-ms 100]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studies.imaging import stimuli  # noqa: E402
from studies.storage.connections import open_db, stimuli_dir, transaction  # noqa: E402
from studies.storage.schema import utc_now  # noqa: E402
from studies.design import StudyOptions  # noqa: E402
from studies.ingest import create_study  # noqa: E402
from studies.readers import invite, reader_for_token  # noqa: E402
from studies.session import next_case, submit  # noqa: E402
from studies.storage import writer_process  # noqa: E402
from bench_studio import process_cpu_s  # noqa: E402


def pct(values, q):
    return float(np.percentile(np.asarray(values), q))


# ------------------------------------------------------------------------------ ingest
def _write_manifest(root: pathlib.Path, rows: list[tuple[str, str]]) -> pathlib.Path:
    lines = ["path,source,modality,prompt"] + [f"{p},{s},CT,benchmark image" for p, s in rows]
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def ingest_png(tmp: pathlib.Path, n: int, size: int) -> dict:
    root = tmp / "png"
    (root / "img").mkdir(parents=True)
    tmp.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.normal(120, 30, (512, 512))
    rows = []
    for i in range(n):
        a = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / "img" / f"{i}.png", compress_level=1)
        rows.append((f"img/{i}.png", "real" if i % 2 else "synthetic"))
    return _timed_ingest(tmp / f"png{n}.db", _write_manifest(root, rows), size, ("turing",), n)


def ingest_dicom(tmp: pathlib.Path, n: int, size: int, name: str) -> dict:
    from pydicom.data import get_testdata_file

    root = tmp / name
    (root / "img").mkdir(parents=True)
    src = get_testdata_file(name)
    rows = []
    for i in range(n):
        shutil.copyfile(src, root / "img" / f"{i}.dcm")
        rows.append((f"img/{i}.dcm", "real" if i % 2 else "synthetic"))
    return _timed_ingest(tmp / f"{name}.db", _write_manifest(root, rows), size, ("turing",), n)


def _timed_ingest(db, manifest, size, tasks, n) -> dict:
    marks = []
    t0 = time.perf_counter()
    create_study(db, "bench", manifest=manifest, size=size, tasks=tasks,
                 options=StudyOptions(seed=1), progress=lambda i, total: marks.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_image = marks[-1] - t0
    return {"images": n, "per_image_phase_s": round(per_image, 2),
            "images_per_s_per_image_phase": round(n / per_image, 1),
            "total_s": round(total, 2), "images_per_s_total": round(n / total, 1)}


# ------------------------------------------------------------------------------ session
def build_large_study(tmp: pathlib.Path, n_cases: int, n_readers: int) -> tuple[pathlib.Path, list[int], dict]:
    db_path = tmp / "large.db"
    sdir = stimuli_dir(db_path)
    sdir.mkdir(parents=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    stim_rows, case_rows = [], []
    for i in range(n_cases):
        sid = stimuli.new_stimulus_id()
        png = stimuli.encode_png(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        (sdir / f"{sid}.png").write_bytes(png)
        stim_rows.append({"id": sid, "study_id": 1, "sha256": "-", "width": 64, "height": 64,
                          "original_format": "PNG", "original_width": 64, "original_height": 64,
                          "original_mode": "RGB", "original_bit_depth": 8, "original_bytes": len(png)})
        case_rows.append({"study_id": 1, "case_key": f"case-{i:05d}", "stimulus_id": sid,
                          "source": "real" if i % 2 else "synthetic", "modality": "CT",
                          "prompt": "benchmark", "generator": "" if i % 2 else "gen",
                          "group_name": "", "original_path": f"{i}.png", "decode_options": "{}",
                          "role": "main", "manifest_row": i + 1})
    t_stimuli = time.perf_counter() - t0
    db = open_db(db_path)
    with transaction(db):
        db["studies"].insert({"id": 1, "name": "large", "created_at": utc_now(), "size": 64,
                              "tasks": json.dumps(["turing"]),
                              "options": json.dumps(StudyOptions(seed=3).to_dict()), "seed": 3,
                              "audit_report": "{}", "audit_text": ""})
        db["stimuli"].insert_all(stim_rows, batch_size=1000)
        db["cases"].insert_all(case_rows, batch_size=1000)
    db.close()
    t1 = time.perf_counter()
    tokens = [invite(db_path, "large", f"reader-{r:03d}") for r in range(n_readers)]
    t_invite = time.perf_counter() - t1
    reader_ids = [reader_for_token(db_path, t).reader_id for t in tokens]
    # Pre-answer the first half of every session (bulk insert: the set-up, not the measure).
    t2 = time.perf_counter()
    db = open_db(db_path)
    now = utc_now()
    with transaction(db):
        for rid in reader_ids:
            rows = db.execute("SELECT id, case_id FROM assignments WHERE reader_id = ? AND "
                              "position <= ?", [rid, n_cases // 2]).fetchall()
            db.conn.executemany(
                "INSERT INTO responses (client_id, reader_id, assignment_id, case_id, task, answer, "
                "rating, duration_ms, shown_at, answered_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(uuid.uuid4().hex, rid, aid, cid, "turing", "real", 2, 1000, now, now)
                 for aid, cid in rows])
            db.conn.executemany("UPDATE assignments SET completed_at = ? WHERE id = ?",
                                [(now, aid) for aid, _ in rows])
    db.close()
    t_prefill = time.perf_counter() - t2
    setup = {"stimuli_and_rows_s": round(t_stimuli, 2), "readers": n_readers, "invite_all_readers_s": round(t_invite, 2),
             "invite_per_reader_ms": round(1000 * t_invite / n_readers, 1),
             "prefill_responses_s": round(t_prefill, 2),
             "db_mb": round(os.path.getsize(db_path) / 1e6, 1)}
    return db_path, reader_ids, setup


def cycle(db_path, reader_id) -> tuple[float, float]:
    t0 = time.perf_counter()
    view = next_case(db_path, reader_id)
    t1 = time.perf_counter()
    submit(db_path, reader_id, view.assignment_id, "turing", 4, 1234, uuid.uuid4().hex)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def latency(db_path, reader_ids, cycles: int, threads: int, think_ms: float = 0.0) -> dict:
    """Closed loop: `threads` client threads each run `cycles` next_case + submit cycles,
    pausing a random (exponential) think time of mean `think_ms` between them (0: none).
    The threads start, and run one unmeasured cycle each, before the clock starts: a
    server's worker threads live on, with their connections open."""
    results: list[tuple[float, float]] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)

    def worker(k):
        cycle(db_path, reader_ids[k % len(reader_ids)])  # this thread's connections
        ready.wait()  # everyone warmed up
        ready.wait()  # the clock has started
        local = []
        rng = random.Random(k)
        for i in range(cycles):
            if think_ms:
                time.sleep(rng.expovariate(1000.0 / think_ms))
            local.append(cycle(db_path, reader_ids[(k + i * threads) % len(reader_ids)]))
        with lock:
            results.extend(local)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    writer = writer_process.writer_for(db_path)
    ready.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    wcpu0 = process_cpu_s(writer.proc.pid) if writer else 0.0
    ready.wait()
    for t in ts:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    wcpu = process_cpu_s(writer.proc.pid) - wcpu0 if writer else 0.0
    nc = [1000 * a for a, _ in results]
    sb = [1000 * b for _, b in results]
    both = [1000 * (a + b) for a, b in results]
    return {
        "threads": threads, "think_ms": think_ms, "cycles": len(results),
        "next_case_ms_median": round(statistics.median(nc), 2), "next_case_ms_p95": round(pct(nc, 95), 2),
        "submit_ms_median": round(statistics.median(sb), 2), "submit_ms_p95": round(pct(sb, 95), 2),
        "submit_ms_p99": round(pct(sb, 99), 2), "submit_ms_max": round(max(sb), 2),
        "cycle_ms_median": round(statistics.median(both), 2), "cycle_ms_p95": round(pct(both, 95), 2),
        "cycles_per_s": round(len(results) / wall, 1),
        # this process's CPU (all threads) per cycle, and the writer process's
        "cpu_ms_per_cycle": round(1000 * cpu / max(1, len(results)), 3),
        "writer_cpu_ms_per_cycle": round(1000 * wcpu / max(1, len(results)), 3),
    }


def latencies(db_path, reader_ids, quick: bool, think_ms: float) -> dict:
    out = {}
    latency(db_path, reader_ids, 5, 1)  # warm-up
    out["1_client"] = latency(db_path, reader_ids, 300 if not quick else 50, 1)
    out["8_clients"] = latency(db_path, reader_ids, 60 if not quick else 10, 8)
    out["32_clients"] = latency(db_path, reader_ids, 60 if not quick else 10, 32)
    if think_ms:
        out[f"32_clients_think_{think_ms:g}ms"] = latency(
            db_path, reader_ids, 30 if not quick else 10, 32, think_ms)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--latency-only", action="store_true",
                    help="skip the ingest part; only the next_case/submit latency")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="also measure 32 clients pausing this mean think time between "
                         "answers (an offered load below capacity, as real readers)")
    args = ap.parse_args()
    n_img = 20 if args.quick else 200
    n_cases, n_readers = (200, 10) if args.quick else (2000, 100)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        if not args.latency_only:
            ingest_png(tmp / "warmup", 4, args.size)  # imports and first-call costs, not measured
            out["ingest_png_512px_grey"] = ingest_png(tmp, n_img, args.size)
            out["ingest_dicom_CT_small_128px"] = ingest_dicom(tmp, n_img, args.size, "CT_small.dcm")
            out["ingest_dicom_693_J2KI_512px_jpeg2000"] = ingest_dicom(tmp, n_img, args.size, "693_J2KI.dcm")
            print(json.dumps(out, indent=2), flush=True)
        db_path, reader_ids, setup = build_large_study(tmp, n_cases, n_readers)
        out["large_study_setup"] = setup
        # As `medisyn studio` runs: answers committed by the writer process ...
        writer_process.start(db_path)
        try:
            out["latency_writer_process"] = latencies(db_path, reader_ids, args.quick, args.think_ms)
        finally:
            writer_process.stop(db_path)
        # ... and by the threads themselves (group commit in this process; --no-writer-process)
        out["latency_in_process"] = latencies(db_path, reader_ids, args.quick, args.think_ms)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
