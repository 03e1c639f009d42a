"""Training data as a weighted mixture of sources, sampled step by step without loading it all.

A mixture file lists sources, one per entry, TOML::

    balance = "modality"                 # or "weight": ignore modalities, use the weights alone
    [[source]]
    path = "chest/captions.csv"           # folder with captions.csv, a manifest CSV, a folder of
    weight = 2                            #   WebDataset .tar shards, or a Hugging Face datasets
    caption = "Chest X-ray: {caption}"    #   folder on disk (save_to_disk .arrow or .parquet files)
    modality = "chest X-ray"             # optional: inferred from the captions when left out

or CSV with columns ``source,weight[,caption,modality]`` (relative paths: from the mixture file).

Sampling: by default every modality gets an equal share of the samples and, inside a modality,
its sources share in proportion to their weights (so a huge chest X-ray set does not drown a
small dermoscopy one); ``balance = "weight"`` uses the weights alone. The source of every sample,
and the position in it, is a pure function of (seed, step, slot): the k-th draw from a source is
record ``perm(seed, source, epoch)[k mod n]`` for table sources and, for tar shards, the shards in
a per-epoch permuted order read sequentially (WebDataset's access pattern). So a resumed run
replays the cheap choices up to its step and reads exactly what an uninterrupted one would,
and ``counts()`` says how many samples came from each source and modality.

Memory: tables keep their paths and captions; tar shards keep one count per shard and read one
record at a time; Arrow/Parquet folders are memory-mapped or read one row group at a time. Images
are decoded only when drawn.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from model_runtime import modalities
from model_runtime.errors import ModelRuntimeError
from model_runtime.training_data import FinetuneError, read_examples
from studies.imaging import decode_rgb

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")
TEXT_KEYS = ("caption", "prompt", "text", "txt")
BALANCES = ("modality", "weight")


class MixtureError(ModelRuntimeError, ValueError):
    """A mixture file or source that cannot be read; the message names which and why."""


@dataclass
class Source:
    path: pathlib.Path
    weight: float = 1.0
    caption: str = "{caption}"   # template: {caption}, {modality}, {source}
    modality: str | None = None  # None: inferred from the captions (or the source's name)


@dataclass
class Mixture:
    sources: list[Source]
    balance: str = "modality"
    spec: pathlib.Path | None = None

    def describe(self) -> list[dict]:
        return [{"path": str(s.path), "weight": s.weight, "caption": s.caption, "modality": s.modality}
                for s in self.sources]


@dataclass
class Record:
    image: Image.Image
    caption: str
    source: int
    modality: str


def is_mixture_file(path) -> bool:
    """A .toml file, or a CSV whose header has ``source`` and ``weight`` (not a path,caption table)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".toml":
        return True
    if path.suffix.lower() != ".csv":
        return False
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return {"source", "weight"} <= {h.strip() for h in header}


def read_mixture(path) -> Mixture:
    path = pathlib.Path(path)
    if not path.is_file():
        raise MixtureError(f"{path}: no such mixture file")
    balance = "modality"
    if path.suffix.lower() == ".toml":
        import tomllib
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MixtureError(f"{path}: not valid TOML ({exc})") from None
        entries = doc.get("source")
        if not isinstance(entries, list) or not entries:
            raise MixtureError(f"{path}: lists no [[source]] entries")
        balance = str(doc.get("balance", balance))
        rows = [{"source": e.get("path"), **{k: e.get(k) for k in ("weight", "caption", "modality")}}
                for e in entries if isinstance(e, dict)]
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise MixtureError(f"{path}: lists no sources")
    if balance not in BALANCES:
        raise MixtureError(f"{path}: balance must be one of {BALANCES}, got {balance!r}")
    sources = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} source {i}"
        if not str(row.get("source") or "").strip():
            raise MixtureError(f"{where}: no path")
        src = (path.parent / str(row["source"]).strip())
        if not src.exists():
            raise MixtureError(f"{where}: {row['source']!r} not found")
        try:
            weight = float(row.get("weight") if row.get("weight") not in (None, "") else 1.0)
        except ValueError:
            raise MixtureError(f"{where}: weight {row.get('weight')!r} is not a number") from None
        if not weight > 0:
            raise MixtureError(f"{where}: weight must be > 0, got {weight}")
        template = str(row.get("caption") or "{caption}")
        try:
            template.format(caption="", modality="", source="")
        except (KeyError, IndexError, ValueError) as exc:
            raise MixtureError(f"{where}: caption template {template!r} is not valid ({exc}); "
                               "use {caption}, {modality}, {source}") from None
        sources.append(Source(src, weight, template, str(row.get("modality") or "").strip() or None))
    return Mixture(sources, balance, path)


# ---------------------------------------------------------------------------------------------
# readers: len() records, read(i) -> (PIL image, caption), captions(limit) without decoding images
# ---------------------------------------------------------------------------------------------

class TableReader:
    """A folder's captions.csv or a manifest CSV (path + caption/prompt): paths and captions only."""

    def __init__(self, path: pathlib.Path, decode: Callable):
        try:
            self.examples = read_examples(path)
        except FinetuneError as exc:
            raise MixtureError(str(exc)) from None
        self.decode = decode

    def __len__(self):
        return len(self.examples)

    def read(self, i: int):
        ex = self.examples[i]
        return self.decode(ex.path), ex.caption

    def captions(self, limit: int) -> list[str]:
        return [ex.caption for ex in self.examples[:limit]]


def _caption_of(files: dict[str, bytes]) -> str | None:
    for key in TEXT_KEYS:
        if key in files:
            return files[key].decode("utf-8").strip()
    if "json" in files:
        meta = json.loads(files["json"])
        for key in TEXT_KEYS:
            if isinstance(meta.get(key), str):
                return meta[key].strip()
    return None


class TarReader:
    """WebDataset shards: records are consecutive tar members sharing a key (``0001.png`` +
    ``0001.txt``); shards are read front to back, one record in memory at a time."""

    def __init__(self, folder: pathlib.Path, seed: int, index: int):
        self.shards = sorted(folder.glob("*.tar")) if folder.is_dir() else [folder]
        if not self.shards:
            raise MixtureError(f"{folder}: no .tar shards")
        self.counts = [sum(1 for _ in self._records(s, captions_only=True)) for s in self.shards]
        if not sum(self.counts):
            raise MixtureError(f"{folder}: its shards hold no image+caption records")
        self.seed, self.index = seed, index
        self._open = None  # (epoch, shard position, next record, iterator)

    def __len__(self):
        return sum(self.counts)

    def _records(self, shard: pathlib.Path, captions_only: bool = False):
        with tarfile.open(shard, "r:*") as tar:
            key, files = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                k, _, ext = name.partition(".")
                k = member.name[: len(member.name) - len(name)] + k
                if k != key and files:
                    rec = self._finish(files, shard, key)
                    if rec:
                        yield rec
                    files = {}
                key, ext = k, ext.lower()
                if captions_only and ext in IMAGE_EXTS:
                    files[ext] = b""  # skipped, not read
                else:
                    files[ext] = tar.extractfile(member).read()
            if files:
                rec = self._finish(files, shard, key)
                if rec:
                    yield rec

    @staticmethod
    def _finish(files, shard, key):
        image = next((e for e in IMAGE_EXTS if e in files), None)
        caption = _caption_of(files)
        if image is None or caption is None:
            return None
        return files[image], caption

    def order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, self.index, epoch, 1])
        return rng.permutation(len(self.shards)).tolist()

    def read_at(self, epoch: int, i: int):
        """Record i of the epoch's stream (shards in the epoch's order, records in file order)."""
        order = self.order(epoch)
        pos = 0
        for slot, shard_index in enumerate(order):
            if i < pos + self.counts[shard_index]:
                break
            pos += self.counts[shard_index]
        within = i - pos
        state = self._open
        if state is None or state[:2] != (epoch, slot) or state[2] > within:
            state = (epoch, slot, 0, self._records(self.shards[shard_index]))
        epoch_, slot_, at, it = state
        while at < within:  # skip forward (after a resume, or past unused records)
            next(it)
            at += 1
        data, caption = next(it)
        self._open = (epoch, slot, at + 1, it)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB"), caption

    def captions(self, limit: int) -> list[str]:
        out = []
        for shard in self.shards:
            for _, caption in self._records(shard, captions_only=True):
                out.append(caption)
                if len(out) >= limit:
                    return out
        return out


class ArrowReader:
    """A Hugging Face datasets folder on disk, read with pyarrow (no ``datasets`` needed):
    ``save_to_disk`` output (``*.arrow``, memory-mapped) or ``*.parquet`` files (one row group in
    memory at a time). Columns: ``image`` (the datasets Image struct {bytes, path} or raw bytes)
    and a text column (caption, prompt or text)."""

    def __init__(self, folder: pathlib.Path):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow comes with the dependencies here
            raise MixtureError(f"{folder}: reading a datasets folder needs pyarrow (pip install pyarrow)") from None
        self.folder = folder
        self.parts = []  # (table or ParquetFile, [row group sizes] or None)
        files = sorted(folder.rglob("*.arrow")) or sorted(folder.rglob("*.parquet"))
        if not files:
            raise MixtureError(f"{folder}: neither .tar shards, .arrow nor .parquet files, nor a captions.csv")
        for f in files:
            if f.suffix == ".arrow":
                source = pa.memory_map(str(f))
                try:
                    table = pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    table = pa.ipc.open_file(source).read_all()
                self.parts.append((table, None))
            else:
                pf = pq.ParquetFile(str(f))
                self.parts.append((pf, [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]))
        first = self.parts[0][0]
        schema = getattr(first, "schema_arrow", None) or first.schema  # Parquet's own schema is flattened
        names = schema.names
        self.text = next((c for c in TEXT_KEYS if c in names), None)
        self.image = "image" if "image" in names else None
        if self.text is None or self.image is None:
            raise MixtureError(f"{folder}: needs an 'image' column and a caption/prompt/text column, found {names}")
        self.sizes = [p.num_rows if g is None else sum(g) for p, g in self.parts]
        self._group = (None, None)

    def __len__(self):
        return sum(self.sizes)

    def _row(self, i: int, columns):
        for part, groups in self.parts:
            n = part.num_rows if groups is None else sum(groups)
            if i < n:
                break
            i -= n
        if groups is None:
            return {c: part.column(c)[i].as_py() for c in columns}
        for g, size in enumerate(groups):
            if i < size:
                break
            i -= size
        if self._group[0] != (id(part), g):  # one row group in memory at a time
            self._group = ((id(part), g), part.read_row_group(g, columns=[self.image, self.text]))
        table = self._group[1]
        return {c: table.column(c)[i].as_py() for c in columns}

    def read(self, i: int):
        row = self._row(i, (self.image, self.text))
        value = row[self.image]
        data = value.get("bytes") if isinstance(value, dict) else value
        if data is None and isinstance(value, dict) and value.get("path"):
            data = (self.folder / value["path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB"), str(row[self.text]).strip()

    def captions(self, limit: int) -> list[str]:
        return [str(self._row(i, (self.text,))[self.text]).strip() for i in range(min(limit, len(self)))]


def open_reader(source: Source, decode: Callable, seed: int, index: int):
    p = source.path
    if p.is_file() and p.suffix.lower() == ".tar" or p.is_dir() and any(p.glob("*.tar")):
        return TarReader(p, seed, index)
    if p.is_file() or (p / "captions.csv").is_file():
        return TableReader(p, decode)
    return ArrowReader(p)


# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------

def infer_modality(captions: list[str], fallback: str) -> str:
    """The canonical modality most captions name; the source's name when none does."""
    votes = Counter(m for c in captions for m in modalities.mentioned(c))
    return votes.most_common(1)[0][0] if votes else fallback


def probabilities(mixture: Mixture, names: list[str]) -> np.ndarray:
    weights = np.array([s.weight for s in mixture.sources], dtype=float)
    if mixture.balance == "weight":
        return weights / weights.sum()
    groups = sorted(set(names))
    p = np.zeros(len(weights))
    for g in groups:
        members = [i for i, n in enumerate(names) if n == g]
        p[members] = weights[members] / weights[members].sum() / len(groups)
    return p


@dataclass
class MixtureSampler:
    """Draws (image, caption) records from a mixture; ``batch(step, n)`` is deterministic in
    (seed, step) and ``replay(step)`` restores the position of a run stopped after ``step``."""
    mixture: Mixture
    seed: int = 0
    decode: Callable | None = None
    readers: list = field(default_factory=list)
    modality_names: list[str] = field(default_factory=list)
    p: np.ndarray | None = None
    drawn: list[int] = field(default_factory=list)   # draws so far per source
    last_step: int = 0

    def __post_init__(self):
        decode = self.decode or decode_rgb
        for i, s in enumerate(self.mixture.sources):
            reader = open_reader(s, decode, self.seed, i)
            if not len(reader):
                raise MixtureError(f"{s.path}: holds no records")
            self.readers.append(reader)
            self.modality_names.append(s.modality or infer_modality(reader.captions(64), s.path.stem))
        self.p = probabilities(self.mixture, self.modality_names)
        self.drawn = [0] * len(self.readers)
        self._perms: dict = {}

    def _choices(self, step: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, 0])
        return rng.choice(len(self.readers), size=n, p=self.p)

    def replay(self, step: int, n: int) -> None:
        """Advance the per-source positions over steps 1..step of n draws each, reading nothing."""
        self.drawn = [0] * len(self.readers)
        for s in range(1, step + 1):
            for c in self._choices(s, n):
                self.drawn[c] += 1
        self.last_step = step

    def _index(self, source: int, k: int) -> tuple[int, int]:
        n = len(self.readers[source])
        epoch, i = divmod(k, n)
        key = (source, epoch)
        if key not in self._perms:
            self._perms = {k_: v for k_, v in self._perms.items() if k_[0] != source}  # one epoch per source
            self._perms[key] = np.random.default_rng([self.seed, source, epoch, 0]).permutation(n)
        return epoch, int(self._perms[key][i])

    def batch(self, step: int, n: int) -> list[Record]:
        if step != self.last_step + 1:
            self.replay(step - 1, n)
        out = []
        for c in self._choices(step, n).tolist():
            k = self.drawn[c]
            self.drawn[c] += 1
            reader, source = self.readers[c], self.mixture.sources[c]
            if isinstance(reader, TarReader):
                epoch, i = divmod(k, len(reader))
                image, caption = reader.read_at(epoch, i)
            else:
                image, caption = reader.read(self._index(c, k)[1])
            text = source.caption.format(caption=caption, modality=self.modality_names[c], source=source.path.stem)
            out.append(Record(image, text, c, self.modality_names[c]))
        self.last_step = step
        return out

    def captions(self, limit: int = 4096) -> list[str]:
        """Captions (templated) from every source, for learning a tokenizer; no image is decoded."""
        out = []
        for c, (reader, source) in enumerate(zip(self.readers, self.mixture.sources)):
            for caption in reader.captions(limit):
                out.append(source.caption.format(caption=caption, modality=self.modality_names[c],
                                                 source=source.path.stem))
        return out

    def counts(self) -> dict:
        """What was sampled so far: per source and per modality, for training.json."""
        per_source = [{"path": str(s.path), "modality": self.modality_names[i], "weight": s.weight,
                       "records": len(self.readers[i]), "probability": round(float(self.p[i]), 6),
                       "sampled": self.drawn[i]} for i, s in enumerate(self.mixture.sources)]
        per_modality = Counter()
        for row in per_source:
            per_modality[row["modality"]] += row["sampled"]
        return {"balance": self.mixture.balance, "steps": self.last_step, "sources": per_source,
                "modalities": dict(sorted(per_modality.items()))}

    def signature(self) -> str:
        """Changes when the sources, their sizes, weights or templates change (resume check)."""
        desc = [[str(s.path), s.weight, s.caption, self.modality_names[i], len(self.readers[i])]
                for i, s in enumerate(self.mixture.sources)]
        return hashlib.sha256(json.dumps([self.mixture.balance, desc]).encode()).hexdigest()
