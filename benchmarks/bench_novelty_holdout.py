"""Error rates of `medisyn eval novelty` on near-copies and novel real images built from shipped data.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_novelty_holdout.py \
        --data /tmp/medisyn-bench-novelty-holdout [--seed 0] [--measures pixel,patch]

Every image comes from files installed with pydicom, nibabel, scikit-image, scikit-learn and
PyWavelets (nothing is downloaded), decoded and normalised to 256 px as a study does, written as
PNG with three manifests (the `group` column names the patient / volume each image belongs to):

- reference.csv — the "training set": axial slices (every other one) of two brain volumes
  (nibabel anatomical.nii T1, example4d.nii.gz EPI), every third frame of the echocardiography
  cine (pydicom examples_ybr_color.dcm), and single DICOM / photograph images (CT chest, CT
  head, MR, liver MR, bone scan, colour Doppler ultrasound, fundus, histology).
- holdout.csv — real images for calibration (`--holdout`), only from groups that share no
  patient, volume or file with the training set (checked): another CT head, a palette
  ultrasound, a secondary capture, an MR angiography projection (nibabel's DICOM test data),
  photographs (scikit-image, scikit-learn, PyWavelets) and faces of Labeled Faces in the Wild.
- synthetic.csv — what is judged. Near-copies of reference images, one kind per row group:
  `adjacent_slice` (the skipped slice between two training slices), `neighbour_frame` (the
  frame after a training frame), `rotate` (2-8 degrees), `shift` (5-10 % with black padding),
  `crop` (80-95 % of the image, resized back), `blend` (average of two references of one
  modality), `paste` (a 40-50 % region of a reference pasted into a novel image), `gamma`
  (0.6 or 1.7), `rescale` (down to 30-50 % and back up); novel real images: `novel_series`
  (other DICOM files and modalities), `novel_other` (other photographs and microscopy); and,
  reported apart, `same_volume`: coronal and sagittal slices of the training volumes (the same
  patients: neither copies nor independent images).

Runs `evaluation.novelty.run_novelty` with the holdout (the default measures unless
`--measures`) and prints the flagged fraction per kind with Wilson 95 % CIs as a Markdown table
(docs/evaluation.md), the held-out real flag rate (each held-out group left out of its own
calibration) and the timings.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pathlib
import time

SIZE = 256
HELD_OUT_FACES = 30


def _normalised(path, **options):
    from studies.imaging import load_image
    from studies.imaging.stimuli import normalise

    return normalise(load_image(path, target_size=SIZE, **options), SIZE)


def _dicom(name):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def _nifti(name):
    from nibabel.testing import data_path

    return os.path.join(data_path, name)


def _nicom(name):
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "nicom", "tests", "data", name)


def _sklearn(name):
    import sklearn

    return os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", name)


def _pywt(name):
    import numpy as np
    import pywt

    with np.load(os.path.join(os.path.dirname(pywt.__file__), "data", f"{name}.npz")) as z:
        return z["data"]


def _array_png(data, name, array):
    """A shipped array (not an image file) written as a 16-bit PNG, then decoded as a study would."""
    import numpy as np
    from PIL import Image

    a = np.asarray(array, np.float64)
    a = np.rint((a - a.min()) / (np.ptp(a) or 1.0) * 65535).astype(np.uint16)
    path = data / "sources" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _skimage(name):
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data", name)


def build(data: pathlib.Path, seed: int) -> dict[str, list[dict]]:
    """Write the images and manifests under `data`; return the manifest rows per set."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sets: dict[str, list[dict]] = {"reference": [], "holdout": [], "synthetic": []}
    pixels: dict[str, np.ndarray] = {}

    def add(kind_set, name, px, modality, group, kind=""):
        rel = f"{kind_set}/{name}.png"
        (data / kind_set).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(px)).save(data / rel)
        sets[kind_set].append({"path": rel, "source": "real" if kind_set != "synthetic" else "synthetic",
                               "modality": modality, "prompt": "", "group": group, "kind": kind})
        if kind_set == "reference":
            pixels[name] = px

    # --- the training set
    t1, epi, echo = _nifti("anatomical.nii"), _nifti("example4d.nii.gz"), _dicom("examples_ybr_color.dcm")
    t1_train, epi_train = range(6, 19, 2), range(4, 21, 2)
    for s in t1_train:
        add("reference", f"t1_ax_{s:02d}", _normalised(t1, slice_index=s, axis=2), "mri", "t1")
    for s in epi_train:
        add("reference", f"epi_ax_{s:02d}", _normalised(epi, slice_index=s, axis=2), "mri", "epi")
    for f in range(0, 30, 3):
        add("reference", f"echo_{f:02d}", _normalised(echo, frame=f), "ultrasound", "echo")
    singles = [("ct_chest", _dicom("CT_small.dcm"), "ct"), ("ct_head", _dicom("693_J2KI.dcm"), "ct"),
               ("mr_small", _dicom("MR_small.dcm"), "mri"), ("mr_liver", _dicom("examples_overlay.dcm"), "mri"),
               ("bone_scan", _dicom("JPGExtended.dcm"), "nuclear"),
               ("us_doppler", _dicom("examples_rgb_color.dcm"), "ultrasound"),
               ("fundus", _skimage("retina.jpg"), "fundus"), ("ihc", _skimage("ihc.png"), "histology")]
    for name, path, modality in singles:
        add("reference", name, _normalised(path), modality, name)

    # --- held-out real images for calibration: groups independent of every training image
    # (no slice, frame or file of a training volume or patient)
    for name, path, modality in [("ct_head_b", _dicom("J2K_pixelrep_mismatch.dcm"), "ct"),
                                 ("us_palette", _dicom("examples_palette.dcm"), "ultrasound"),
                                 ("sc_dfl", _dicom("image_dfl.dcm"), "other"),
                                 ("mr_angio_mip", _nicom("slicethickness_empty_string.dcm"), "mri")]:
        add("holdout", name, _normalised(path), modality, name)
    for name in ("camera.png", "coins.png", "moon.png", "astronaut.png", "coffee.png", "chelsea.png",
                 "brick.png", "page.png", "grass.png", "gravel.png"):
        add("holdout", name.split(".")[0], _normalised(_skimage(name)), "photo", name)
    for name in ("china.jpg", "flower.jpg"):
        add("holdout", name.split(".")[0], _normalised(_sklearn(name)), "photo", name)
    for name in ("ascent", "aero"):
        add("holdout", name, _normalised(_array_png(data, name, _pywt(name))), "photo", name)
    faces = np.load(_skimage("lfw_subset.npy"))[:HELD_OUT_FACES]  # Labeled Faces in the Wild: other people
    for i, face in enumerate(faces):
        add("holdout", f"lfw_face_{i:02d}", _normalised(_array_png(data, f"lfw_face_{i:02d}", face)), "photo",
            f"lfw_face_{i:02d}")

    # --- judged, reported on their own: other orientations of the training volumes (the same
    # patients: neither a copy nor an independent image)
    for s in range(4, 37, 2):
        add("synthetic", f"same_volume_t1_cor_{s:02d}", _normalised(t1, slice_index=s, axis=1), "mri", "",
            "same_volume")
    for s in range(20, 80, 4):
        add("synthetic", f"same_volume_epi_cor_{s:02d}", _normalised(epi, slice_index=s, axis=1), "mri", "",
            "same_volume")
    for s in range(8, 26, 2):
        add("synthetic", f"same_volume_t1_sag_{s:02d}", _normalised(t1, slice_index=s, axis=0), "mri", "",
            "same_volume")
    for s in range(40, 90, 6):
        add("synthetic", f"same_volume_epi_sag_{s:02d}", _normalised(epi, slice_index=s, axis=0), "mri", "",
            "same_volume")

    # --- judged: novel real images
    novel_bases = []
    for name, path, modality in [("us_jpeg2k", _dicom("examples_jpeg2k.dcm"), "ultrasound"),
                                 ("us_small", _dicom("ExplVR_BigEnd.dcm"), "ultrasound"),
                                 ("sc_text", _dicom("GDCMJ2K_TextGBR.dcm"), "other"),
                                 ("sc_rgb", _dicom("SC_rgb_jpeg.dcm"), "other"),
                                 ("microaneurysms", _skimage("microaneurysms.png"), "fundus")]:
        add("synthetic", f"novel_series_{name}", _normalised(path), modality, "", "novel_series")
    for name in ("cell.png", "phantom.png", "horse.png", "rocket.jpg", "hubble_deep_field.jpg", "text.png",
                 "clock_motion.png", "motorcycle_left.png", "logo.png", "color.png"):
        px = _normalised(_skimage(name))
        add("synthetic", f"novel_other_{name.split('.')[0]}", px, "photo", "", "novel_other")
        novel_bases.append(px)

    # --- judged: near-copies of reference images
    for s in t1_train[:-1]:
        add("synthetic", f"adjacent_slice_t1_{s + 1:02d}", _normalised(t1, slice_index=s + 1, axis=2), "mri", "",
            "adjacent_slice")
    for s in epi_train[:-1]:
        add("synthetic", f"adjacent_slice_epi_{s + 1:02d}", _normalised(epi, slice_index=s + 1, axis=2), "mri", "",
            "adjacent_slice")
    for f in range(0, 30, 3):
        add("synthetic", f"neighbour_frame_{f + 1:02d}", _normalised(echo, frame=f + 1), "ultrasound", "",
            "neighbour_frame")
    names = sorted(pixels)
    modality_of = {r["path"].split("/")[1][:-4]: r["modality"] for r in sets["reference"]}
    for kind in ("rotate", "shift", "crop", "blend", "paste", "gamma", "rescale"):
        chosen = rng.choice(names, size=14, replace=False)
        for i, name in enumerate(chosen):
            px = pixels[name]
            out = _near_copy(kind, px, rng, pixels, names, modality_of, name, novel_bases)
            add("synthetic", f"{kind}_{i:02d}_{name}", out, modality_of[name], "", kind)
    for key, rows in sets.items():
        with open(data / f"{key}.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "source", "modality", "prompt", "group"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    (data / "kinds.json").write_text(json.dumps({r["path"]: r["kind"] for r in sets["synthetic"]}, indent=1))
    return sets


def check_independent(data: pathlib.Path) -> None:
    """The held-out set must share no group (patient / volume / file) with the training set."""
    groups = {}
    for key in ("reference", "holdout"):
        with open(data / f"{key}.csv", newline="", encoding="utf-8") as fh:
            groups[key] = {r["group"] for r in csv.DictReader(fh)}
    shared = groups["reference"] & groups["holdout"]
    if shared:
        raise SystemExit(f"held-out groups that are training groups: {sorted(shared)}")


def _near_copy(kind, px, rng, pixels, names, modality_of, name, bases):
    import numpy as np
    from PIL import Image

    im = Image.fromarray(px)
    if kind == "rotate":
        angle = float(rng.uniform(2, 8)) * (1 if rng.random() < 0.5 else -1)
        return np.asarray(im.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)))
    if kind == "shift":
        dx, dy = (rng.uniform(0.05, 0.10, 2) * SIZE * rng.choice([-1, 1], 2)).astype(int)
        out = np.zeros_like(px)
        xs, xd = (slice(0, SIZE - dx), slice(dx, SIZE)) if dx >= 0 else (slice(-dx, SIZE), slice(0, SIZE + dx))
        ys, yd = (slice(0, SIZE - dy), slice(dy, SIZE)) if dy >= 0 else (slice(-dy, SIZE), slice(0, SIZE + dy))
        out[yd, xd] = px[ys, xs]
        return out
    if kind == "crop":
        c = int(SIZE * rng.uniform(0.80, 0.95))
        top, left = rng.integers(0, SIZE - c + 1, 2)
        return np.asarray(im.crop((left, top, left + c, top + c)).resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    if kind == "blend":
        same = [n for n in names if n != name and modality_of[n] == modality_of[name]] or \
               [n for n in names if n != name]
        other = pixels[same[int(rng.integers(len(same)))]]
        return np.clip(np.rint(0.5 * px.astype(np.float32) + 0.5 * other), 0, 255).astype(np.uint8)
    if kind == "paste":
        base = bases[int(rng.integers(len(bases)))].copy()
        side = int(SIZE * rng.uniform(0.40, 0.50))
        # the region of the reference with the most structure (a copied lesion, not background)
        best, at = -1.0, (0, 0)
        for _ in range(20):
            t, l = rng.integers(0, SIZE - side + 1, 2)
            s = float(px[t:t + side, l:l + side].std())
            if s > best:
                best, at = s, (t, l)
        t, l = at
        T, L = rng.integers(0, SIZE - side + 1, 2)
        base[T:T + side, L:L + side] = px[t:t + side, l:l + side]
        return base
    if kind == "gamma":
        g = 0.6 if rng.random() < 0.5 else 1.7
        return np.clip(np.rint(255 * (px / 255.0) ** g), 0, 255).astype(np.uint8)
    if kind == "rescale":
        s = int(SIZE * rng.uniform(0.30, 0.50))
        return np.asarray(im.resize((s, s), Image.Resampling.BILINEAR).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    raise ValueError(kind)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/tmp/medisyn-bench-novelty-holdout"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measures", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import shutil

    import torch

    from evaluation.novelty import DEFAULT_MEASURES, format_rate, run_novelty, wilson

    torch.set_num_threads(args.threads)
    # the folder is named by a hash of this script, so a changed benchmark never reuses old data
    version = hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest()[:12]
    data = args.data / f"seed{args.seed}-{version}"
    t = time.perf_counter()
    if not (data / "kinds.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        build(data, args.seed)
    prep = time.perf_counter() - t
    kinds = json.loads((data / "kinds.json").read_text())
    check_independent(data)
    measures = args.measures.split(",") if args.measures else list(DEFAULT_MEASURES)
    out = data / "out"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    res = run_novelty(data / "synthetic.csv", data / "reference.csv", out, holdout=data / "holdout.csv",
                      measures=measures, progress=False)
    total = time.perf_counter() - t
    by_kind: dict[str, list[bool]] = {}
    for r in res.rows:
        by_kind.setdefault(kinds[r["synthetic"]], []).append(r["flagged"])
    copy_kinds = ["adjacent_slice", "neighbour_frame", "rotate", "shift", "crop", "blend", "paste", "gamma",
                  "rescale"]
    novel_kinds = ["novel_series", "novel_other"]

    def row(label, flags):
        rate = wilson(sum(flags), len(flags))
        lo, hi = rate["ci_wilson"]
        return f"| {label} | {len(flags)} | {sum(flags)} ({rate['value']:.0%}) | {lo:.0%}-{hi:.0%} |"

    lines = ["| kind | judged | flagged | 95 % CI (Wilson) |", "|---|---|---|---|"]
    lines += [row(kind.replace("_", " "), by_kind.get(kind, [])) for kind in copy_kinds + novel_kinds]
    lines.append(row("all near-copies", [f for k in copy_kinds for f in by_kind.get(k, [])]))
    lines.append(row("all novel real images", [f for k in novel_kinds for f in by_kind.get(k, [])]))
    lines.append(row("held-out real images (each group left out of its own calibration)",
                     [h["flagged"] for h in res.holdout["rows"]]))
    lines.append(row("same volume, other orientation (reported apart)", by_kind.get("same_volume", [])))
    report = {"measures": res.measures, "thresholds": res.thresholds, "reference": res.n_reference,
              "holdout": res.holdout["n"], "holdout_groups": res.holdout["n_groups"],
              "holdout_flag_rate": format_rate(res.holdout_rate),
              "holdout_flagged": [h["holdout"] for h in res.holdout["rows"] if h["flagged"]],
              "synthetic_flag_rate": format_rate(res.synthetic_rate), "warnings": res.warnings,
              "missed": [r["synthetic"] for r in res.rows if not r["flagged"] and kinds[r["synthetic"]] in copy_kinds],
              "false_flags": [r["synthetic"] for r in res.rows
                              if r["flagged"] and kinds[r["synthetic"]].startswith("novel")],
              "prepare_seconds": round(prep, 1), "run_seconds": round(total, 1),
              "stages": {k: round(v, 1) for k, v in res.timings.items()}, "threads": args.threads,
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
