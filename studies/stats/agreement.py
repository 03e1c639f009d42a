"""Agreement between and within readers: Fleiss' κ, Cohen's κ, Krippendorff's α, ICC.

- Fleiss' κ: statsmodels `fleiss_kappa`; its z-test (not in statsmodels) uses the
  large-sample null variance of Fleiss, Nee & Landis (1979) Psychol Bull 86:974, the
  formula of R's irr::kappam.fleiss.
- Cohen's κ for one table: statsmodels `cohens_kappa` (κ, ASE, CI, null ASE, Z, p;
  weighted with linear or quadratic weights — Fleiss, Cohen & Everitt 1969).
  For all reader pairs at once `kappa_from_tables` evaluates the same formulas on a
  stack of tables with numpy: statsmodels takes ~1 ms a table and a 100-reader study has
  4,950 pairs per task. tests/studies/stats/test_agreement.py checks both agree.
- Krippendorff's α: the `krippendorff` package (missing ratings allowed).
- ICC: the six Shrout & Fleiss (1979) forms from two-way ANOVA mean squares, with the
  F-tests and the confidence intervals of Shrout & Fleiss (1979) and McGraw & Wong
  (1996) Psychol Methods 1:30 — statsmodels has no ICC, so it is written here.

Undefined values are None with a sibling `<key>_reason`.

Cohen's κ variances are differences of nearly equal sums, so an exact zero comes out as
±1e-17; both paths treat |variance| below `VAR_RTOL` × 1/((1−pe)²n) (the formula's own
scale) as zero. When one reader of a pair gave the same answer to every case, κ is 0 by
construction and has no sampling variance: its SE, CI, z and p are null with `ONE_ANSWER`.
"""
from __future__ import annotations

import krippendorff
import numpy as np
from scipy import stats
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa as _sm_fleiss_kappa

from studies.stats.proportions import null_fields as _null

ICC_FORMS = ("ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k")
VAR_RTOL = 1e-9
"""Cohen's κ (null) variance below this, relative to 1/((1−pe)²n), is zero (rounding)."""
ONE_ANSWER = ("one reader gave the same answer to every case: kappa is 0 by construction "
              "and has no sampling variance")


# --- Fleiss ------------------------------------------------------------------------------

def category_counts(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """Subjects × categories counts from a subjects × raters matrix of codes 0..C−1 (−1 = missing)."""
    codes = np.asarray(codes)
    out = np.zeros((codes.shape[0], n_categories), dtype=np.int64)
    rows = np.repeat(np.arange(codes.shape[0]), codes.shape[1])
    flat = codes.ravel()
    keep = flat >= 0
    np.add.at(out, (rows[keep], flat[keep]), 1)
    return out


def fleiss_kappa(counts) -> dict:
    """Fleiss' κ with its z-test from a subjects × categories count table (equal raters per subject)."""
    counts = np.asarray(counts, dtype=float)
    n_sub = counts.shape[0]
    per_subject = counts.sum(axis=1) if n_sub else np.array([])
    out: dict = {"n_subjects": int(n_sub), "n_raters": int(per_subject.max()) if n_sub else 0}
    keys = ("kappa", "z", "p")
    if n_sub == 0:
        return _null(out, keys, "no subject was rated by every reader")
    m = per_subject[0]
    if m < 2:
        return _null(out, keys, "only one reader")
    if not np.all(per_subject == m):
        raise ValueError("Fleiss' kappa needs the same number of ratings for every subject")
    p = counts.sum(axis=0) / (n_sub * m)
    pq = p * (1 - p)
    if pq.sum() == 0:
        return _null(out, keys, "no variation: every rating is in the same category")
    out["kappa"] = float(_sm_fleiss_kappa(counts, method="fleiss"))
    # Null variance of Fleiss, Nee & Landis (1979), as irr::kappam.fleiss.
    var0 = 2 / (pq.sum() ** 2 * n_sub * m * (m - 1)) * (pq.sum() ** 2 - (pq * (1 - 2 * p)).sum())
    if var0 <= 0:
        return _null(out, ("z", "p"), "null variance is zero")
    out["se0"] = float(np.sqrt(var0))
    out["z"] = out["kappa"] / out["se0"]
    out["p"] = float(2 * stats.norm.sf(abs(out["z"])))
    return out


# --- Cohen ------------------------------------------------------------------------------

def cohen_kappa(table, *, weights: str | None = None, alpha: float = 0.05) -> dict:
    """Cohen's κ of one square table via statsmodels: {kappa, ase, ci, ase0, z, p, n}.

    weights: None (simple κ), 'linear' (Cicchetti–Allison) or 'quadratic' (Fleiss–Cohen).
    """
    table = np.asarray(table, dtype=float)
    n = float(table.sum())
    out: dict = {"n": int(n), "weights": weights or "none"}
    keys = ("kappa", "ase", "ci", "ase0", "z", "p")
    if n == 0:
        return _null(out, keys, "no cases rated by both")
    pe = (table.sum(0) * table.sum(1)).sum() / n ** 2
    if np.isclose(pe, 1.0):
        return _null(out, keys, "chance agreement is 1: both used a single, identical category")
    with np.errstate(divide="ignore", invalid="ignore"):
        res = cohens_kappa(table, wt=weights) if weights else cohens_kappa(table)
    if not np.isfinite(res.kappa):
        return _null(out, keys, "expected disagreement is zero")
    out["kappa"] = float(res.kappa)
    if min((table.sum(0) > 0).sum(), (table.sum(1) > 0).sum()) == 1:
        return _null(out, ("ase", "ci", "ase0", "z", "p"), ONE_ANSWER)
    scale = VAR_RTOL / ((1 - pe) ** 2 * n)
    var, var0 = (0.0 if abs(v) <= scale else v for v in (res.var_kappa, res.var_kappa0))
    _fill_se(out, var, var0, alpha)
    return out


def _fill_se(out: dict, var, var0, alpha: float) -> None:
    kappa = out["kappa"]
    if np.isfinite(var) and var >= 0:
        ase = float(np.sqrt(var))
        z = stats.norm.ppf(1 - alpha / 2)
        out["ase"] = ase
        out["ci"] = [float(kappa - z * ase), float(kappa + z * ase)]
    else:
        _null(out, ("ase", "ci"), "asymptotic variance not computable")
    if np.isfinite(var0) and var0 > 0:
        out["ase0"] = float(np.sqrt(var0))
        out["z"] = kappa / out["ase0"]
        out["p"] = float(2 * stats.norm.sf(abs(out["z"])))
    else:
        _null(out, ("ase0", "z", "p"), "variance under H0 is zero")


def _weight_matrix(C: int, weights: str | None) -> np.ndarray:
    """Agreement weights w (SAS convention, 1 on the diagonal)."""
    i = np.arange(C)
    if weights is None:
        return np.eye(C)
    d = np.abs(i[:, None] - i[None, :]) / max(C - 1, 1)
    if weights == "linear":
        return 1 - d
    if weights == "quadratic":
        return 1 - d ** 2
    raise ValueError(f"unknown weights {weights!r}")


def kappa_from_tables(tables, *, weights: str | None = None) -> dict[str, np.ndarray]:
    """Cohen's κ, its variance and null variance for a stack of P tables (P, C, C).

    Same formulas as statsmodels `cohens_kappa` (Fleiss, Cohen & Everitt 1969); the
    unweighted case is the weighted one with identity weights. Entries are NaN where
    undefined (the caller turns them into null + reason).
    """
    tables = np.asarray(tables, dtype=float)
    P, C, _ = tables.shape
    w = _weight_matrix(C, weights)
    n = tables.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = tables / n[:, None, None]
        pr = p.sum(axis=2)  # row marginals (first reader)
        pc = p.sum(axis=1)  # column marginals (second reader)
        e = pr[:, :, None] * pc[:, None, :]
        po = (w * p).sum(axis=(1, 2))
        pe = (w * e).sum(axis=(1, 2))
        kappa = (po - pe) / (1 - pe)
        w_row = pc @ w.T  # w̄_i. = Σ_j pc_j w_ij
        w_col = pr @ w    # w̄_.j = Σ_i pr_i w_ij
        wsum = w_row[:, :, None] + w_col[:, None, :]
        term = (p * (w - wsum * (1 - kappa)[:, None, None]) ** 2).sum(axis=(1, 2))
        fac = 1 / ((1 - pe) ** 2 * n)
        var = (term - (kappa - pe * (1 - kappa)) ** 2) * fac
        var0 = ((e * (w - wsum) ** 2).sum(axis=(1, 2)) - pe ** 2) * fac
        # Rounding noise around an exact zero is zero (see the module docstring).
        var = np.where(np.abs(var) <= VAR_RTOL * fac, 0.0, var)
        var0 = np.where(np.abs(var0) <= VAR_RTOL * fac, 0.0, var0)
    one_answer = ((pr > 0).sum(axis=1) == 1) | ((pc > 0).sum(axis=1) == 1)
    return {"n": n, "kappa": kappa, "var": var, "var0": var0, "pe": pe,
            "one_answer": one_answer}


def pair_tables(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """(R, R, C, C) cross tables of every reader pair from an R × N matrix of codes (−1 = missing)."""
    codes = np.asarray(codes)
    R, N = codes.shape
    onehot = np.zeros((R, n_categories, N), dtype=np.float32)  # counts < 2**24 are exact in float32
    r_idx, n_idx = np.nonzero(codes >= 0)
    onehot[r_idx, codes[r_idx, n_idx], n_idx] = 1.0
    flat = onehot.reshape(R * n_categories, N)
    t = (flat @ flat.T).reshape(R, n_categories, R, n_categories)
    return t.transpose(0, 2, 1, 3).astype(np.float64)


def kappa_entries(tables, labels, *, weights: str | None = None, alpha: float = 0.05) -> list[dict]:
    """JSON-ready κ entries for a stack of tables; labels[i] is a dict merged into entry i.

    Vectorised: thousands of reader pairs cost a few milliseconds.
    """
    if not len(labels):
        return []
    res = kappa_from_tables(tables, weights=weights)
    zc = stats.norm.ppf(1 - alpha / 2)
    n = res["n"].astype(int)
    kappa, var, var0 = res["kappa"], res["var"], res["var0"]
    undefined = (n == 0) | np.isclose(res["pe"], 1.0) | ~np.isfinite(kappa)
    one_answer = res["one_answer"] & ~undefined
    has_var = np.isfinite(var) & (var >= 0) & ~undefined & ~one_answer
    has_var0 = np.isfinite(var0) & (var0 > 0) & ~undefined & ~one_answer
    with np.errstate(invalid="ignore", divide="ignore"):
        ase = np.sqrt(np.where(has_var, var, np.nan))
        ase0 = np.sqrt(np.where(has_var0, var0, np.nan))
        z = kappa / ase0
    p = 2 * stats.norm.sf(np.abs(z))
    cols = [c.tolist() for c in (n, kappa, ase, kappa - zc * ase, kappa + zc * ase, ase0, z, p,
                                  undefined, has_var, has_var0, one_answer)]
    out = []
    for label, (ni, k, a, lo, hi, a0, zi, pi, und, hv, hv0, one) in zip(labels, zip(*cols)):
        entry = dict(label)
        entry["n"] = ni
        if und:
            reason = ("no cases rated by both" if ni == 0
                      else "chance agreement is 1: both used a single, identical category")
            _null(entry, ("kappa", "ase", "ci", "ase0", "z", "p"), reason)
        elif one:
            entry["kappa"] = k
            _null(entry, ("ase", "ci", "ase0", "z", "p"), ONE_ANSWER)
        else:
            entry["kappa"] = k
            if hv:
                entry["ase"], entry["ci"] = a, [lo, hi]
            else:
                _null(entry, ("ase", "ci"), "asymptotic variance not computable")
            if hv0:
                entry["ase0"], entry["z"], entry["p"] = a0, zi, pi
            else:
                _null(entry, ("ase0", "z", "p"), "variance under H0 is zero")
        out.append(entry)
    return out


def pairwise_cohen_kappa(codes: np.ndarray, n_categories: int, readers, *,
                         weights: str | None = None, alpha: float = 0.05) -> dict:
    """Cohen's κ for every reader pair on the cases both rated.

    Returns {weights, pairs: [{reader_a, reader_b, n, kappa, ase, ci, z, p}], mean_kappa}.
    """
    readers = [str(r) for r in readers]
    R = len(readers)
    out: dict = {"weights": weights or "none"}
    if R < 2:
        out["pairs"] = []
        return _null(out, ("mean_kappa",), "only one reader")
    tables = pair_tables(codes, n_categories)
    a, b = np.triu_indices(R, 1)
    labels = [{"reader_a": readers[i], "reader_b": readers[j]} for i, j in zip(a, b)]
    out["pairs"] = kappa_entries(tables[a, b], labels, weights=weights, alpha=alpha)
    ks = [p["kappa"] for p in out["pairs"] if p.get("kappa") is not None]
    if ks:
        out["mean_kappa"] = float(np.mean(ks))
    else:
        _null(out, ("mean_kappa",), "no reader pair has a defined kappa")
    return out


# --- Krippendorff ---------------------------------------------------------------------

def krippendorff_alpha(reliability, level: str = "nominal") -> dict:
    """Krippendorff's α of a raters × units matrix (NaN = missing) via the `krippendorff` package."""
    data = np.asarray(reliability, dtype=float)
    out: dict = {"level": level}
    if data.ndim != 2 or data.size == 0:
        out["n_units"], out["n_raters"] = 0, 0
        return _null(out, ("alpha",), "no ratings")
    pairable = (~np.isnan(data)).sum(axis=0) >= 2
    out["n_units"] = int(pairable.sum())
    out["n_raters"] = int(data.shape[0])
    if data.shape[0] < 2:
        return _null(out, ("alpha",), "only one reader")
    if not pairable.any():
        return _null(out, ("alpha",), "no case was rated by two or more readers")
    values = data[:, pairable]
    values = values[~np.isnan(values)]
    if np.unique(values).size < 2:
        return _null(out, ("alpha",), "no variation: every rating is the same")
    alpha = krippendorff.alpha(reliability_data=data[:, pairable], level_of_measurement=level)
    if not np.isfinite(alpha):
        return _null(out, ("alpha",), "expected disagreement is zero")
    out["alpha"] = float(alpha)
    return out


# --- ICC ------------------------------------------------------------------------------

def icc(ratings, *, alpha: float = 0.05) -> dict:
    """The six Shrout & Fleiss (1979) ICCs of a complete targets × judges matrix.

    Mean squares of the two-way layout: BMS (targets), JMS (judges), EMS (residual) and
    WMS (within targets, judges + residual; the one-way model). k = judges, n = targets.
      ICC1  = (BMS − WMS) / (BMS + (k−1)WMS)          F = BMS/WMS, df (n−1, n(k−1))
      ICC2  = (BMS − EMS) / (BMS + (k−1)EMS + k(JMS − EMS)/n)   F = BMS/EMS, df (n−1, (n−1)(k−1))
      ICC3  = (BMS − EMS) / (BMS + (k−1)EMS)          F = BMS/EMS, df (n−1, (n−1)(k−1))
      ICC1k = (BMS − WMS)/BMS; ICC2k = (BMS − EMS)/(BMS + (JMS − EMS)/n); ICC3k = (BMS − EMS)/BMS
    CIs: ICC1/ICC3 (and their k forms) by inverting the F ratio (Shrout & Fleiss, eqs. 6–7,
    13); ICC2 by Satterthwaite's approximation (McGraw & Wong 1996, Table 7), ICC2k by
    Spearman–Brown of the ICC2 limits — the same as R's psych::ICC.
    Returns {form: {icc, f, df1, df2, p, ci, n_targets, n_judges}}.
    """
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape if x.ndim == 2 else (0, 0)
    keys = ("icc", "f", "df1", "df2", "p", "ci")
    base = {"n_targets": int(n), "n_judges": int(k)}
    if n < 2 or k < 2 or np.isnan(x).any():
        reason = ("only one reader" if k < 2 else "fewer than two cases rated by every reader"
                  if n < 2 else "ratings are incomplete")
        return {form: _null(dict(base), keys, reason) for form in ICC_FORMS}
    grand = x.mean()
    ss_b = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_j = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_e = ((x - grand) ** 2).sum() - ss_b - ss_j
    bms, jms = ss_b / (n - 1), ss_j / (k - 1)
    ems = ss_e / ((n - 1) * (k - 1))
    wms = (ss_j + ss_e) / (n * (k - 1))
    df_b, df_w, df_e = n - 1, n * (k - 1), (n - 1) * (k - 1)
    q = 1 - alpha / 2
    out: dict = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = bms / wms
        f3 = bms / ems
        values = {
            "ICC1": (bms - wms) / (bms + (k - 1) * wms),
            "ICC2": (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),
            "ICC3": (bms - ems) / (bms + (k - 1) * ems),
            "ICC1k": (bms - wms) / bms,
            "ICC2k": (bms - ems) / (bms + (jms - ems) / n),
            "ICC3k": (bms - ems) / bms,
        }
        # One-way (ICC1) and consistency (ICC3) limits invert the F ratio.
        fl1, fu1 = f1 / stats.f.ppf(q, df_b, df_w), f1 * stats.f.ppf(q, df_w, df_b)
        fl3, fu3 = f3 / stats.f.ppf(q, df_b, df_e), f3 * stats.f.ppf(q, df_e, df_b)
        # ICC2: Satterthwaite df for the mix of JMS and EMS (McGraw & Wong 1996).
        r2 = values["ICC2"]
        a = k * r2 / (n * (1 - r2))
        b = 1 + k * r2 * (n - 1) / (n * (1 - r2))
        v = (a * jms + b * ems) ** 2 / ((a * jms) ** 2 / (k - 1) + (b * ems) ** 2 / df_e)
        fs_l = stats.f.ppf(q, n - 1, v)
        fs_u = stats.f.ppf(q, v, n - 1)
        l2 = n * (bms - fs_l * ems) / (fs_l * (k * jms + (k * n - k - n) * ems) + n * bms)
        u2 = n * (fs_u * bms - ems) / (k * jms + (k * n - k - n) * ems + n * fs_u * bms)
        cis = {
            "ICC1": ((fl1 - 1) / (fl1 + k - 1), (fu1 - 1) / (fu1 + k - 1)),
            "ICC2": (l2, u2),
            "ICC3": ((fl3 - 1) / (fl3 + k - 1), (fu3 - 1) / (fu3 + k - 1)),
            "ICC1k": (1 - 1 / fl1, 1 - 1 / fu1),
            "ICC2k": (l2 * k / (1 + l2 * (k - 1)), u2 * k / (1 + u2 * (k - 1))),
            "ICC3k": (1 - 1 / fl3, 1 - 1 / fu3),
        }
    tests = {"ICC1": (f1, df_b, df_w), "ICC1k": (f1, df_b, df_w)}
    for form in ("ICC2", "ICC3", "ICC2k", "ICC3k"):
        tests[form] = (f3, df_b, df_e)
    for form in ICC_FORMS:
        entry = dict(base)
        f, d1, d2 = tests[form]
        val = values[form]
        if not np.isfinite(val):
            reason = ("no variance: every rating is the same" if bms == 0 and ems == 0 and jms == 0
                      else "undefined: zero variance between cases")
            _null(entry, keys, reason)
        else:
            entry["icc"] = float(val)
            entry["df1"], entry["df2"] = int(d1), int(d2)
            if np.isfinite(f):
                entry["f"] = float(f)
                entry["p"] = float(stats.f.sf(f, d1, d2))
            else:
                _null(entry, ("f", "p"), "residual mean square is zero (perfect agreement)")
            lo, hi = (float(c) for c in cis[form])
            if np.isfinite(lo) and np.isfinite(hi):
                entry["ci"] = [lo, hi]
            else:
                _null(entry, ("ci",), "confidence limits not computable (zero residual variance)")
        out[form] = entry
    return out
