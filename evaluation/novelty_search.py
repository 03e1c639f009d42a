"""Candidate search of the novelty check: cached descriptors, streamed exact k-NN, and the
per-pair measures of each query's candidate references (`match`).

`evaluation.novelty.run_novelty` calls `describe_set` for each set and `match` for each block
of queries (held-out or synthetic); the partial-copy search lives in `evaluation.novelty_patch`.
"""
from __future__ import annotations

import hashlib
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np

from evaluation import descriptors as D
from evaluation import novelty_patch as P
from evaluation.images import ImageRef, iter_chunks

__all__ = ["describe_set", "knn_hamming", "knn_inner_product", "match"]

_CACHE_VERSION = 3
_BLOCK = 8192  # reference vectors per search block


# ---------------------------------------------------------------------------------------
# descriptors, cached as memory-mapped arrays

def _cache_key(refs: Sequence[ImageRef], size: int, features) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION} size={size} features={getattr(features, 'name', None)}".encode())
    for r in refs:
        try:
            st = r.path.stat()
            h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}|{r.options}\n".encode())
        except OSError:
            h.update(f"{r.path}|missing\n".encode())
    return h.hexdigest()[:24]


def describe_set(refs: Sequence[ImageRef], size: int, cache_dir: pathlib.Path, *, flips: bool,
                 features=None, chunk: int = 256, progress=None, cancel=None) -> dict[str, np.ndarray]:
    """Memory-mapped descriptors of a set (cached under cache_dir/<key>; reused when unchanged).

    flips=True also stores the pHashes of the two mirrored versions ('hash_h', 'hash_v').
    'digest' is a 16-byte hash of the normalised pixels (exact duplicates).
    """
    key = _cache_key(refs, size, features) + ("f" if flips else "")
    folder = cache_dir / key
    names = (["vec", "struct", "grey", "hash", "digest"] + (["hash_h", "hash_v"] if flips else [])
             + (["feat"] if features else []))
    if (folder / "done").is_file():
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n = len(refs)
    shapes = {"vec": ((n, D.SEARCH_SIZE ** 2), np.float32), "struct": ((n, D.STRUCT_SIZE, D.STRUCT_SIZE), np.uint8),
              "grey": ((n, D.STRUCT_SIZE, D.STRUCT_SIZE), np.uint8),
              "hash": ((n, 8), np.uint8), "hash_h": ((n, 8), np.uint8), "hash_v": ((n, 8), np.uint8),
              "digest": ((n, 16), np.uint8)}
    if features is not None:
        shapes["feat"] = ((n, features.dim), np.float32)
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=shapes[name][1],
                                              shape=shapes[name][0]) for name in names}
    for start, images in iter_chunks(refs, size, chunk=chunk, cancel=cancel):
        d = D.describe(images)
        end = start + len(images)
        for name in ("vec", "struct", "grey", "hash"):
            arrays[name][start:end] = d[name]
        for j, im in enumerate(images):
            arrays["digest"][start + j] = np.frombuffer(hashlib.blake2b(im.tobytes(), digest_size=16).digest(),
                                                        np.uint8)
        if flips:
            grey = np.rint(D.to_grey(images) * 255).astype(np.uint8)
            arrays["hash_h"][start:end] = D.phash_bits(grey[:, :, ::-1])
            arrays["hash_v"][start:end] = D.phash_bits(grey[:, ::-1])
        if features is not None:
            arrays["feat"][start:end] = _unit(features.from_normalised(images))
        if progress is not None:
            progress(len(images))
    for a in arrays.values():
        a.flush()
    (folder / "done").write_text("ok\n")
    return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _vec_variants(vec: np.ndarray) -> list[np.ndarray]:
    g = np.asarray(vec).reshape(-1, D.SEARCH_SIZE, D.SEARCH_SIZE)
    return [np.ascontiguousarray(g.reshape(len(g), -1)),
            np.ascontiguousarray(g[:, :, ::-1].reshape(len(g), -1)),
            np.ascontiguousarray(g[:, ::-1].reshape(len(g), -1))]


def _coarse(vec: np.ndarray) -> np.ndarray:
    """8 x 8 zero-mean unit vectors from the 32 x 32 search grids: blurred enough that a few
    degrees of rotation, a 10 % shift or a 90 % crop barely change them (candidate search)."""
    g = np.asarray(vec, np.float32).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(-1, 64)
    g = g - g.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-6), np.float32)


def _struct_variant(struct: np.ndarray, variant: np.ndarray) -> np.ndarray:
    out = np.array(struct)
    out[variant == 1] = out[variant == 1][:, :, ::-1]
    out[variant == 2] = out[variant == 2][:, ::-1]
    return out


def _prepare_reference(ref: dict, measures) -> None:
    """In-memory search structures of the reference set, built once per run."""
    if "grid" not in ref:
        struct = np.asarray(ref["struct"])
        ref["grid"] = D.reference_grids(struct)
        ref["grid_norms"] = D.window_norms(ref["grid"])
        ref["coarse"] = _coarse(ref["vec"])
    if "patch" in measures:
        P.prepare_reference(ref)


# ---------------------------------------------------------------------------------------
# streamed exact k-NN search

def _merge_topk(best_d, best_i, d, i, k, largest: bool):
    if best_d is None:
        dd, ii = d, i
    else:
        dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd if largest else dd, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)


def _excluded(exclude, base_groups, start, stop):
    """query x block mask of base rows a query must not match (its own group, or itself)."""
    bg = np.arange(start, stop) if base_groups is None else np.asarray(base_groups[start:stop])
    return np.asarray(exclude)[:, None] == bg[None, :]


def knn_inner_product(queries: np.ndarray, base: np.ndarray, k: int, exclude=None, base_groups=None):
    """Exact top-k by inner product, streamed over blocks of `base` (memory: one block).

    exclude: optional array, one value per query: the base row (or, with `base_groups`, the group
    id) the query must never be matched with — itself, or its own patient / volume.
    """
    import faiss

    q = np.ascontiguousarray(queries, np.float32)
    best_d = best_i = None
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.float32)
        kk = min(k, len(block))
        if exclude is None:
            d, i = faiss.knn(q, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            sims = q @ block.T
            sims[_excluded(exclude, base_groups, start, start + len(block))] = -np.inf
            i = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            d = np.take_along_axis(sims, i, 1)
        best_d, best_i = _merge_topk(best_d, best_i, d, i + start, k, largest=True)
    best_i = np.where(np.isfinite(best_d), best_i, -1)
    return best_d, best_i


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def knn_hamming(queries: np.ndarray, base: np.ndarray, k: int, exclude=None, base_groups=None):
    """Exact top-k by Hamming distance of packed 64-bit codes, streamed over blocks."""
    import faiss

    q = np.ascontiguousarray(queries, np.uint8)
    best_d = best_i = None
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.uint8)
        kk = min(k, len(block))
        if exclude is None:
            index = faiss.IndexBinaryFlat(64)
            index.add(block)
            d, i = index.search(q, kk)
            d = d.astype(np.float32)
        else:
            d = np.empty((len(q), len(block)), np.float32)
            for s in range(0, len(q), 256):
                d[s:s + 256] = _POPCOUNT[q[s:s + 256, None, :] ^ block[None]].sum(axis=2)
            d[_excluded(exclude, base_groups, start, start + len(block))] = np.inf
            i = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            d = np.take_along_axis(d, i, 1)
        best_d, best_i = _merge_topk(best_d, best_i, d, i + start, k, largest=False)
    best_i = np.where(np.isfinite(best_d), best_i, -1)
    return best_d, best_i


def _best_k(results, k, largest: bool) -> np.ndarray:
    """Indices of the k best distinct references over several (distances, indices) results."""
    d = np.concatenate([r[0] for r in results], 1)
    i = np.concatenate([r[1] for r in results], 1)
    order = np.argsort(-d if largest else d, axis=1, kind="stable")
    d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    out = np.full((len(i), k), -1, np.int64)
    for row in range(len(i)):
        valid = i[row][i[row] >= 0]
        _, first = np.unique(valid, return_index=True)
        keep = valid[np.sort(first)][:k]
        out[row, :len(keep)] = keep
    return out


# ---------------------------------------------------------------------------------------
# matching one block of queries against the reference set

def match(query: dict, qidx: np.ndarray, ref: dict, measures: Sequence[str], k: int,
          exclude_self: bool = False, k_struct: int = 1, query_groups=None,
          ref_groups=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Best value per measure and the nearest reference (by measures[0]) for query rows qidx.

    query/ref: descriptor dicts; query needs 'hash_h'/'hash_v'. exclude_self: qidx indexes the
    reference set itself and a query never matches its own row. query_groups (one group id per
    row of qidx) with ref_groups (one per reference): a query never matches its own group.
    """
    _prepare_reference(ref, measures)
    if query_groups is not None:
        exclude, base_groups = np.asarray(query_groups), np.asarray(ref_groups)
    elif exclude_self:
        exclude, base_groups = np.asarray(qidx), None
    else:
        exclude = base_groups = None
    vec = np.asarray(query["vec"][qidx])
    variants = _vec_variants(vec)
    coarse = [_coarse(v) for v in variants]
    # k candidates per measure, each the best over the three orientations
    cand = [_best_k([knn_inner_product(v, ref["vec"], k, exclude, base_groups) for v in variants], k, largest=True),
            _best_k([knn_inner_product(c, ref["coarse"], k, exclude, base_groups) for c in coarse], k, largest=True)]
    hashes = [np.asarray(query[h][qidx]) for h in ("hash", "hash_h", "hash_v")]
    if "phash" in measures:
        cand.append(_best_k([knn_hamming(h, ref["hash"], k, exclude, base_groups) for h in hashes], k, largest=False))
    if "features" in measures:
        cand.append(knn_inner_product(np.asarray(query["feat"][qidx]), ref["feat"], k, exclude, base_groups)[1])
    cand = np.concatenate(cand, 1)
    nq = len(qidx)
    # unique candidate pairs
    pairs_q = np.repeat(np.arange(nq), cand.shape[1])
    pairs_r = cand.reshape(-1)
    keep = pairs_r >= 0
    pq, pr = np.unique(np.stack([pairs_q[keep], pairs_r[keep]], 1), axis=0).T if keep.any() else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))
    q_struct_all = np.asarray(query["struct"][qidx])
    values: dict[str, np.ndarray] = {}
    if len(pq):
        uniq = np.sort(np.unique(pr))
        lookup = {r: j for j, r in enumerate(uniq)}
        at = np.array([lookup[r] for r in pr])
        rv = np.asarray(ref["vec"][uniq])[at]
        sims = np.stack([np.einsum("ij,ij->i", v[pq], rv) for v in variants], 1)
        variant = sims.argmax(1)
        values["pixel"] = D.transform_ncc(D.query_kernels(q_struct_all), ref["grid"], pq, pr,
                                           ref["grid_norms"])
        if any(m in measures for m in ("tiled_l2", "ssim", "ms_ssim")):
            ref_struct = np.asarray(ref["struct"][uniq])[at]
            q_struct = _struct_variant(q_struct_all[pq], variant)
            framed = D.pair_measures(q_struct, ref_struct, measures, groups=pq, top=k_struct)
            values["pixel"] = np.maximum(values["pixel"], framed["pixel"])
            values.update({m: framed[m] for m in ("tiled_l2", "ssim", "ms_ssim") if m in framed})
        if "phash" in measures:
            rh = np.asarray(ref["hash"][uniq])[at]
            values["phash"] = np.min(np.stack([D.hamming(h[pq], rh) for h in hashes], 1), 1).astype(np.float32)
        if "features" in measures:
            rf = np.asarray(ref["feat"][uniq])[at]
            values["features"] = np.einsum("ij,ij->i", np.asarray(query["feat"][qidx])[pq], rf)
    best = {}
    nearest = np.full(nq, -1)
    for m in measures:
        higher = D.MEASURES[m].higher_is_closer
        if m == "patch":
            qg = None if exclude is None else exclude
            rg = base_groups
            if rg is None and exclude is not None:  # exclude_self: each reference is its own group
                rg = np.arange(len(ref["vec"]))
            best[m], arg = P.patch_search(np.asarray(query["grey"][qidx]), ref, qg, rg)
            if m == measures[0]:
                nearest = arg
            continue
        if not len(pq):
            best[m] = np.full(nq, -np.inf if higher else np.inf)
            continue
        v = np.nan_to_num(values[m] if higher else -values[m], nan=-np.inf)
        out = np.full(nq, -np.inf)
        arg = np.full(nq, -1)
        order = np.lexsort((-v, pq))  # by query, best first
        first = np.ones(len(order), bool)
        first[1:] = pq[order][1:] != pq[order][:-1]
        out[pq[order][first]] = v[order][first]
        arg[pq[order][first]] = pr[order][first]
        best[m] = out if higher else -out
        if m == measures[0]:
            nearest = arg
    return best, nearest
