"""Mixture sources for tests: tiny drawn images in every source kind (CSV table, tar shards,
Arrow/Parquet) and the mixture TOML that lists them."""
from __future__ import annotations

import csv
import io
import json
import pathlib
import tarfile

import numpy as np
from PIL import Image

CT = "Axial CT image of the head"
FUNDUS = "fundus photograph of the left retina"


def disc(i: int) -> Image.Image:
    yy, xx = np.mgrid[:32, :32]
    img = np.zeros((32, 32, 3), np.uint8)
    img[(yy - 16) ** 2 + (xx - 16) ** 2 < (6 + i % 8) ** 2] = (230, 120, 40)
    return Image.fromarray(img)


def stripes(i: int) -> Image.Image:
    xx = np.mgrid[:32, :32][1]
    return Image.fromarray(np.repeat((((xx + i) // 4) % 2 * 160).astype(np.uint8)[..., None], 3, axis=2))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def table_source(folder: pathlib.Path, n: int, draw, caption: str) -> pathlib.Path:
    folder.mkdir(parents=True)
    with open(folder / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "caption"])
        for i in range(n):
            draw(i).save(folder / f"{i}.png")
            w.writerow([f"{i}.png", f"{caption} number {i}"])
    return folder


def tar_source(folder: pathlib.Path, shards: int, per_shard: int, draw, caption: str) -> pathlib.Path:
    """WebDataset layout: consecutive members share a key (``000003.png`` + ``000003.txt``)."""
    folder.mkdir(parents=True)
    k = 0
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:05d}.tar", "w") as tar:
            for _ in range(per_shard):
                for ext, data in (("png", png_bytes(draw(k))), ("txt", f"{caption} number {k}".encode())):
                    info = tarfile.TarInfo(f"{k:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                k += 1
    return folder


def arrow_source(folder: pathlib.Path, n: int, draw, caption: str, parquet: bool = False) -> pathlib.Path:
    """What ``datasets.Dataset.save_to_disk`` writes (an Arrow stream with the Image feature's
    {bytes, path} struct), or the Hub's Parquet layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": png_bytes(draw(i)), "path": None} for i in range(n)], image_type),
                      "text": [f"{caption} number {i}" for i in range(n)]})
    if parquet:
        pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=3)
    else:
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return folder


def write_toml(path: pathlib.Path, entries: list[dict], balance: str | None = None) -> pathlib.Path:
    lines = [f'balance = "{balance}"'] if balance else []
    for e in entries:
        lines.append("[[source]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in e.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
