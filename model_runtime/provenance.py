"""Provenance of a synthetic image, written into the file itself.

PNG: a tEXt chunk ``parameters`` in the AUTOMATIC1111 format that Civitai, InvokeAI and
Fooocus read::

    <prompt>
    Negative prompt: <negative prompt>          (always written, empty or not: ComfyUI's importer
                                                 skips text without it)
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 0123456789, Model: <name>

``Sampler`` is A1111's name when the scheduler maps to one (the checkpoint's own
``DDIMScheduler`` is "DDIM"), else the scheduler's class name. ``Model hash`` is A1111's short
hash: the first 10 hex digits of the sha256 of the denoiser's weight file (see
:func:`denoiser_weights_files`); it is left out when there is none.

plus a chunk ``medisyn`` holding JSON: ``"synthetic": true``, model id and weights sha256, every
generation parameter, software and library versions. No timestamp: the same inputs give the
same bytes, so a batch job's output can be compared file by file across machines and engines.

DICOM (optional): Secondary Capture with ConversionType SYN (synthetic image), ImageType
DERIVED\\SECONDARY, BurnedInAnnotation NO, the A1111 text in ImageComments, a one-line
statement in DerivationDescription, and the same JSON in a private block. UIDs derive from the
content, so re-exporting an image gives the same UIDs.

A reader study strips all of this before showing an image (studies/).
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import tempfile
import threading

from model_runtime.errors import ModelNotFoundError, ModelRuntimeError

PNG_PARAMETERS_KEY = "parameters"
PNG_JSON_KEY = "medisyn"
DICOM_PRIVATE_GROUP = 0x0011
DICOM_PRIVATE_CREATOR = "MEDISYN PROVENANCE"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_A1111_ORDER = ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model")


@functools.lru_cache(maxsize=None)
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def software_version() -> str:
    return f"medisyn-studio {_version('medisyn-studio')}"


def model_label(model_id: str) -> str:
    """Short model name for the A1111 line: a registry key or Hub id as is, a path's folder name."""
    text = str(model_id)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not os.path.exists(text):
        return text  # a Hub id
    if "/" in text or os.sep in text:
        path = pathlib.PurePath(text)
        return path.parent.name if path.name in ("", "pipeline") else path.name
    return text


def generator_label(model_id: str, entry=None) -> str:
    """What a manifest's `generator` column says for images of this model -- the same in
    the CLI batch and the studio's Generate tab: the registry key when the model came from
    the registry (`embedded`), `embedded` for the embedded model's folder given as a path,
    else `model_label` (a Hub id, or a folder's name; never a full path)."""
    if entry is not None:
        return entry.key
    from model_runtime import registry

    try:
        embedded = registry.embedded_model_path().resolve()
        if pathlib.Path(str(model_id)).expanduser().resolve() == embedded:
            return registry.EMBEDDED
    except (KeyError, OSError, RuntimeError, ValueError):
        pass
    return model_label(model_id)


def record(img) -> dict:
    """The JSON provenance of a GeneratedImage."""
    params = img.parameters()
    params["index"] = img.index
    rec = {
        "synthetic": True,
        "software": software_version(),
        "model": {"id": str(img.model_id), "name": img.model_name, "pipeline": img.pipeline_class,
                  "weights_sha256": img.weights_sha256},
        "parameters": params,
        "runtime": {"device": img.device, "dtype": img.dtype, "torch": _version("torch"),
                    "diffusers": _version("diffusers"), "transformers": _version("transformers")},
    }
    if getattr(img, "loras", None):
        rec["loras"] = list(img.loras)
    denoiser = getattr(img, "denoiser_sha256", "")
    if denoiser:
        rec["model"]["denoiser_sha256"] = denoiser
    sampler = getattr(img, "sampler_a1111", "")
    if sampler:
        rec["parameters_a1111"] = {"sampler": sampler}
    if getattr(img, "prompt_seen", None) is not None:
        # the text encoder read only this much of the prompt (see generation.prompt_seen)
        rec["prompt_truncated"] = True
        rec["prompt_seen"] = img.prompt_seen
    return rec


def lora_tags(rec: dict) -> str:
    """A1111's ``<lora:name:scale>`` tags for the record's adapters ("" when none)."""
    return " ".join(f"<lora:{item['name']}:{_number(item['scale'])}>" for item in rec.get("loras") or ())


def _quote(value) -> str:
    # A1111 quotes values that would break its "key: value, key: value" line
    text = str(value)
    if "," in text or ":" in text or "\n" in text or '"' in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _number(value: float) -> str:
    return f"{float(value):g}"


def a1111_parameters(rec: dict) -> str:
    """The A1111 ``parameters`` text for a provenance record (see module docstring)."""
    p = rec["parameters"]
    # Always the negative line, even empty: ComfyUI's A1111 importer ignores text without it.
    # A1111 keeps LoRA adapters as tags in the prompt text itself, and their hashes in the fields.
    lines = [" ".join(filter(None, [p["prompt"], lora_tags(rec)])),
             f"Negative prompt: {p.get('negative_prompt') or ''}".rstrip()]
    sampler = (rec.get("parameters_a1111") or {}).get("sampler") or p["scheduler"]
    denoiser = rec["model"].get("denoiser_sha256") or ""
    fields = {"Steps": p["steps"], "Sampler": sampler, "CFG scale": _number(p["guidance_scale"]),
              "Seed": p["seed"], "Size": f"{p['width']}x{p['height']}", "Model hash": denoiser[:10],
              "Model": model_label(rec["model"]["id"])}
    line = ", ".join(f"{k}: {_quote(fields[k])}" for k in _A1111_ORDER if fields[k] != "")
    if rec.get("loras"):
        line += ", Lora hashes: " + _quote(", ".join(f"{i['name']}: {i['sha256'][:12]}" for i in rec["loras"]))
    lines.append(line)
    return "\n".join(lines)


def parse_a1111_parameters(text: str) -> dict:
    """Inverse of a1111_parameters for the fields it writes: prompt, negative_prompt and the
    key/value line (values as strings)."""
    lines = text.split("\n")
    last = lines[-1]
    body = lines[:-1]
    negative = ""
    for i, line in enumerate(body):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].removeprefix(" ")] + body[i + 1:])
            body = body[:i]
            break
    out = {"prompt": "\n".join(body), "negative_prompt": negative}
    for key, value in _split_fields(last):
        out[key] = value
    return out


def _split_fields(line: str):
    i, n = 0, len(line)
    while i < n:
        colon = line.index(": ", i)
        key = line[i:colon].strip()
        j = colon + 2
        if j < n and line[j] == '"':
            value, end = json.JSONDecoder().raw_decode(line, j)
        else:
            end = line.find(", ", j)
            end = n if end < 0 else end
            value = line[j:end]
        yield key, value
        i = end + 2 if end < n else n


# --- PNG -------------------------------------------------------------------------------

def atomic_write(path: pathlib.Path, write) -> pathlib.Path:
    """Write via a temporary file in the same folder, then rename: readers (and a resumed
    batch job) never see a half-written image."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; an output file gets the mode open() would give it (0666 - umask)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc); else
    set-and-restore, which is a brief process-wide change."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def png_bytes(image, rec: dict) -> bytes:
    """Encoded PNG with both provenance chunks (deterministic for the same pixels and record)."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_PARAMETERS_KEY, a1111_parameters(rec))  # falls back to iTXt for non-Latin-1 prompts
    info.add_text(PNG_JSON_KEY, json.dumps(rec, sort_keys=True, ensure_ascii=True, separators=(",", ":")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(img, path, *, rec: dict | None = None) -> pathlib.Path:
    """Save a GeneratedImage (or a PIL image with an explicit ``rec``) as PNG, atomically."""
    rec = rec if rec is not None else record(img)
    image = getattr(img, "image", img)
    data = png_bytes(image, rec)
    return atomic_write(pathlib.Path(path), lambda fh: fh.write(data))


def read_png(path) -> tuple[str | None, dict | None]:
    """(A1111 parameters text, JSON record) of a PNG; None for a missing chunk."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # text chunks after the image data are only read on load
        text = dict(getattr(im, "text", {}) or {})
    raw = text.get(PNG_JSON_KEY)
    return text.get(PNG_PARAMETERS_KEY), (json.loads(raw) if raw else None)


def read_png_provenance(path) -> dict | None:
    return read_png(path)[1]


# --- DICOM -----------------------------------------------------------------------------

def save_dicom(img, path, *, rec: dict | None = None, modality: str = "OT",
               grayscale: bool | None = None) -> pathlib.Path:
    """Export as a DICOM Secondary Capture marked synthetic, carrying the same provenance.

    ``grayscale`` None: MONOCHROME2 when the three channels are identical, else RGB; True:
    MONOCHROME2 from the image's luminance (PIL "L"), for greyscale modalities whose generated
    RGB channels differ slightly (see :func:`dicom_modality`).
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rec = rec if rec is not None else record(img)
    source = getattr(img, "image", img)
    image = source.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    if grayscale is None:
        grayscale = bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all())
    elif grayscale:
        grey = np.asarray(source.convert("L"), dtype=np.uint8)
        pixels = np.repeat(grey[..., None], 3, axis=2)
    rec_json = json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(rec_json.encode() + pixels.tobytes()).hexdigest()

    def uid(role: str) -> str:
        return generate_uid(entropy_srcs=[digest, role])

    text = a1111_parameters(rec)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid("sop")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: prompts are free text
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "SYN"  # DICOM's defined term for a synthetic image
    ds.Modality = modality
    ds.BurnedInAnnotation = "NO"
    ds.PatientName = "SYNTHETIC^IMAGE"
    ds.PatientID = f"SYN-{digest[:12]}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.PatientOrientation = ""  # Type 2: present, empty (a generated image has no known orientation)
    ds.InstanceNumber = int(rec["parameters"].get("index", 0)) + 1
    ds.StudyDescription = "Synthetic images (MediSyn Studio)"
    ds.SeriesDescription = f"SYNTHETIC - {model_label(rec['model']['id'])}"[:64]
    ds.Manufacturer = "MediSyn Studio"
    ds.SoftwareVersions = rec["software"][:64]
    ds.DerivationDescription = (
        f"SYNTHETIC image generated from a text prompt by {model_label(rec['model']['id'])} "
        f"(weights sha256 {rec['model']['weights_sha256']}); not an image of a patient.")[:1024]
    ds.ImageComments = ("SYNTHETIC IMAGE - not from a patient. Generation parameters:\n" + text)[:10240]
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if grayscale:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(pixels[..., 0]).tobytes()
    else:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    block = ds.private_block(DICOM_PRIVATE_GROUP, DICOM_PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "UT", rec_json)

    def write(fh):
        ds.save_as(fh, enforce_file_format=True)

    return atomic_write(pathlib.Path(path), write)


# DICOM Modality (C.7.3.1.1.1 defined terms) for the presets' modality names; anything else is OT.
DICOM_MODALITIES = {
    "chest x-ray": "DX", "x-ray": "DX", "radiograph": "DX", "ct": "CT", "mri": "MR", "ultrasound": "US",
    "fundus photograph": "OP", "oct": "OPT", "histology": "SM", "endoscopy": "ES", "colonoscopy": "ES",
    "dermoscopy": "XC", "clinical photograph": "XC", "surgical video frame": "ES", "nuclear medicine": "NM",
}
# Modalities whose images are greyscale: written as MONOCHROME2 even when the generated RGB
# channels differ slightly (ultrasound is not here: colour Doppler).
GREYSCALE_DICOM_MODALITIES = {"DX", "CR", "CT", "MR", "NM", "OPT", "PT", "MG"}


def dicom_modality(modality: str) -> str:
    """DICOM Modality code for a manifest modality ("CT", "chest X-ray" ...); "OT" if unknown."""
    text = " ".join(str(modality or "").lower().split())
    if text.upper() in {"CT", "MR", "US", "DX", "CR", "NM", "PT", "MG", "OP", "OPT", "SM", "ES", "XC", "OT"}:
        return text.upper()
    return DICOM_MODALITIES.get(text, "OT")


def read_dicom_provenance(path) -> dict | None:
    """The JSON record of a DICOM written by save_dicom, or None."""
    import pydicom

    ds = pydicom.dcmread(path)
    try:
        block = ds.private_block(DICOM_PRIVATE_GROUP, DICOM_PRIVATE_CREATOR)
        return json.loads(block[0x10].value)
    except KeyError:
        return None


# --- which weights made an image ------------------------------------------------------

_file_hash_cache: dict[tuple[str, int, int], str] = {}
_file_hash_lock = threading.Lock()


class HashingStopped(ModelRuntimeError):
    """A background weights hash stopped because the interpreter is exiting."""


_stop_hashing = threading.Event()
_hashers: list[threading.Thread] = []


def hash_in_background(loaded) -> None:
    """Compute ``loaded.weights_hash`` (a LoadedModel's, cached there) on a daemon thread."""
    def run():
        with contextlib.suppress(HashingStopped):
            loaded.weights_hash  # cached on the model; asked for again, it is computed then
    thread = threading.Thread(target=run, name="weights-hash", daemon=True)
    _hashers[:] = [t for t in _hashers if t.is_alive()] + [thread]
    thread.start()


@atexit.register
def _stop_background_hashing() -> None:
    """Stop and join background hashes before the interpreter exits: a daemon thread still
    hashing then made one exit in four abort ("terminate called without an active
    exception", exit status 134) after a script had loaded a model and finished."""
    _stop_hashing.set()
    for thread in list(_hashers):
        thread.join(timeout=10)


def file_sha256(path: pathlib.Path) -> str:
    """sha256 of a file. In the Hugging Face cache the blob's name already is its sha256."""
    if path.is_symlink():
        target = path.resolve()
        if target.parent.name == "blobs" and _SHA256.match(target.name):
            return target.name
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _file_hash_lock:
        cached = _file_hash_cache.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            if _stop_hashing.is_set():  # the interpreter is exiting (see _stop_background_hashing)
                raise HashingStopped(str(path))
            h.update(chunk)
    digest = h.hexdigest()
    with _file_hash_lock:
        _file_hash_cache[key] = digest
    return digest


def denoiser_weights_files(path: str | os.PathLike, *, subfolder: str | None = None,
                           variant: str | None = None) -> list[pathlib.Path]:
    """The denoiser's weight file(s) — UNet or transformer — of a diffusers folder.

    This is "the weights file" of A1111's ``Model hash`` for a diffusers checkpoint: the part a
    fine-tune changes (text encoders and VAE are usually the base model's). safetensors are
    preferred over .bin, the ``variant`` file over the plain one; a sharded denoiser gives its
    shards in order. Empty when there is none (e.g. a combined pipeline with other names).
    """
    root = pathlib.Path(path)
    folders = [subfolder] if subfolder else ["unet", "transformer"]
    for sub in folders:
        folder = root / sub
        if not folder.is_dir():
            continue
        for suffix in (".safetensors", ".bin"):
            stems = [f"diffusion_pytorch_model.{variant}", "diffusion_pytorch_model"] if variant \
                else ["diffusion_pytorch_model"]
            for stem in stems:
                single = folder / f"{stem}{suffix}"
                if single.is_file():
                    return [single]
                shards = sorted(folder.glob(f"{stem}-*-of-*{suffix}"))
                if shards:
                    return shards
    return []


def denoiser_sha256(path: str | os.PathLike, *, subfolder: str | None = None,
                    variant: str | None = None) -> str:
    """sha256 of the denoiser's weight file (A1111's ``Model hash`` is its first 10 hex digits);
    for a sharded denoiser, the sha256 of its "name:sha256" lines; "" when there is none."""
    files = denoiser_weights_files(path, subfolder=subfolder, variant=variant)
    if not files:
        return ""
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("\n".join(f"{f.name}:{file_sha256(f)}" for f in files).encode()).hexdigest()


def weights_hash(path: str | os.PathLike, *, extra=()) -> str:
    """sha256 of the sorted "relative/path:sha256" lines of every weight file under ``path``
    (plus ``extra`` files such as a LoRA). The same weights give the same hash whether they sit
    in a local folder or in the Hub cache. A single-file checkpoint's hash is the file's own
    sha256 (what ``sha256sum`` and A1111's model hash read): its name plays no part."""
    root = pathlib.Path(path)
    if root.is_file() and not extra:
        return file_sha256(root)
    lines = [file_sha256(root)] if root.is_file() else []  # a single-file checkpoint, with adapters
    for f in sorted(root.rglob("*")):
        if f.suffix in WEIGHT_SUFFIXES and f.is_file():
            lines.append(f"{f.relative_to(root).as_posix()}:{file_sha256(f)}")
    for f in extra:
        f = pathlib.Path(f)
        files = sorted(p for p in f.rglob("*") if p.suffix in WEIGHT_SUFFIXES) if f.is_dir() else [f]
        lines.extend(f"+{p.name}:{file_sha256(p)}" for p in files)
    if not lines:
        raise ModelNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {root}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
