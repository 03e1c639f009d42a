"""Multi-reader multi-case ROC analysis: Obuchowski–Rockette with Hillis' denominator df.

References
- Obuchowski & Rockette (1995) Commun Stat Simul Comput 24:285 — the OR model.
- Hillis (2007) Stat Med 26:596 — the denominator degrees of freedom (ddf_H) and the
  single-treatment analysis; Hillis, Berbaum & Metz (2008) Acad Radiol 15:647.
- RJafroc (Chakraborty) — the published Van Dyke results we reproduce
  (tests/studies/stats/test_mrmc.py, oracle in tests/data/oracles).

Figure of merit: the empirical (Wilcoxon) AUC. Its jackknife covariances are computed
from placement values, exactly and in O(K) per reader × treatment: leaving out positive
i gives AUC_(i) = (m·AUC − V10_i)/(m − 1), leaving out negative j gives
(n·AUC − V01_j)/(n − 1). `jackknife_auc_naive` recomputes every AUC (the O(K³) way) and
is kept as the reference the fast path is tested against.

Design: scores[t, r, k] is reader r's rating of case k under treatment t; member[t, k]
says whether case k belongs to treatment t. In a fully crossed study (Van Dyke) every
case belongs to every treatment. In a visual Turing test with several generators the
real images (negatives) are shared by every treatment and each generator's images
(positives) belong to that treatment only. The jackknife runs over the union of cases:
leaving out a real image perturbs every treatment's AUC (this is what makes AUCs of
different treatments covary), leaving out a generator-g image perturbs only treatment g.
A case outside a treatment contributes exactly zero deviation to its pseudo-values
(the deviations of each class sum to zero), so for a fully crossed design this is the
standard RJafroc computation. See docs/statistics.md.

Undefined values are None with a sibling `<key>_reason`.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from studies.stats.proportions import clip_ci
from studies.stats.proportions import null_fields as _null
from studies.stats.roc import placements_batch

METHOD = ("Obuchowski–Rockette ANOVA of empirical (Wilcoxon) AUCs, jackknife covariances "
          "(via placement values), Hillis (2007) denominator degrees of freedom")


def _check(scores, truth, member):
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 2:
        scores = scores[None]
    truth = np.asarray(truth, dtype=bool)
    T, R, K = scores.shape
    if truth.shape != (K,):
        raise ValueError(f"truth has shape {truth.shape}, expected ({K},)")
    member = np.ones((T, K), dtype=bool) if member is None else np.asarray(member, dtype=bool)
    if member.shape != (T, K):
        raise ValueError(f"member has shape {member.shape}, expected ({T}, {K})")
    if np.isnan(scores[np.broadcast_to(member[:, None, :], scores.shape)]).any():
        raise ValueError("MRMC needs a fully crossed block: a member case has no rating")
    for t in range(T):
        n_pos, n_neg = int((member[t] & truth).sum()), int((member[t] & ~truth).sum())
        if n_pos < 2 or n_neg < 2:
            raise ValueError(f"treatment {t} has {n_pos} positive and {n_neg} negative cases; "
                             "the jackknife needs at least two of each")
    return scores, truth, member


def jackknife_auc(scores, truth, member=None) -> tuple[np.ndarray, np.ndarray]:
    """AUC per (treatment, reader) and its jackknife values per left-out case.

    scores: (T, R, K) or (R, K); truth: (K,) bool (True = positive); member: (T, K) bool.
    Returns theta (T, R) and jk (T, R, K), jk[t, r, k] = AUC without case k.
    """
    scores, truth, member = _check(scores, truth, member)
    T, R, K = scores.shape
    theta = np.empty((T, R))
    jk = np.empty((T, R, K))
    for t in range(T):
        pos_idx = np.flatnonzero(member[t] & truth)
        neg_idx = np.flatnonzero(member[t] & ~truth)
        m, n = pos_idx.size, neg_idx.size
        a, v10, v01 = placements_batch(scores[t][:, neg_idx], scores[t][:, pos_idx])
        theta[t] = a
        jk[t] = a[:, None]  # cases outside the treatment leave its AUC unchanged
        jk[t][:, pos_idx] = (m * a[:, None] - v10) / (m - 1)
        jk[t][:, neg_idx] = (n * a[:, None] - v01) / (n - 1)
    return theta, jk


def _auc_pairwise(neg, pos) -> float:
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def jackknife_auc_naive(scores, truth, member=None) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation: recompute every AUC with each case left out (slow)."""
    scores, truth, member = _check(scores, truth, member)
    T, R, K = scores.shape
    theta = np.empty((T, R))
    jk = np.empty((T, R, K))
    for t, r in itertools.product(range(T), range(R)):
        s, keep = scores[t, r], member[t]
        theta[t, r] = _auc_pairwise(s[keep & ~truth], s[keep & truth])
        for k in range(K):
            keep_k = keep.copy()
            keep_k[k] = False
            jk[t, r, k] = _auc_pairwise(s[keep_k & ~truth], s[keep_k & truth])
    return theta, jk


def jackknife_covariance(jk: np.ndarray) -> np.ndarray:
    """Jackknife covariance matrix of the (T·R) AUCs: (K−1)/K · Σ_k (θ_k − θ̄)(θ'_k − θ̄')."""
    T, R, K = jk.shape
    d = jk.reshape(T * R, K)
    d = d - d.mean(axis=1, keepdims=True)
    return (d @ d.T) * (K - 1) / K


def covariance_components(cov: np.ndarray, T: int, R: int) -> dict:
    """OR error (co)variances averaged over the pairs they describe.

    var: same treatment & reader; cov1: different treatment, same reader;
    cov2: same treatment, different reader; cov3: different treatment and reader.
    """
    c = cov.reshape(T, R, T, R)
    same_t = np.eye(T, dtype=bool)[:, None, :, None]
    same_r = np.eye(R, dtype=bool)[None, :, None, :]
    out = {"var": float(c[same_t & same_r].mean())}
    for key, mask in (("cov1", ~same_t & same_r), ("cov2", same_t & ~same_r), ("cov3", ~same_t & ~same_r)):
        full = np.broadcast_to(mask, c.shape)
        if full.any():
            out[key] = float(c[full].mean())
        else:
            out[key] = None
            out[f"{key}_reason"] = "only one reader" if key == "cov2" or (key == "cov3" and T > 1) else \
                "only one treatment"
    return out


def _finite_ddf(num: float, den: float) -> float:
    return float("inf") if den == 0 else num / den


def single_treatment(theta_r: np.ndarray, var: float, cov2: float | None, *,
                     null_auc: float = 0.5, alpha: float = 0.05) -> dict:
    """Mean AUC of one treatment against null_auc (Hillis 2007, single treatment).

    Random readers: MS_den = MS(R) + J·max(Cov2, 0), SE = sqrt(MS_den/J),
    ddf = MS_den² / (MS(R)²/(J−1)), t = (AUC − null)/SE, F = t².
    Fixed readers: SE = sqrt((Var + (J−1)·max(Cov2, 0))/J), z-test.
    """
    theta_r = np.asarray(theta_r, dtype=float)
    J = theta_r.size
    mean = float(theta_r.mean())
    cov2p = max(cov2, 0.0) if cov2 is not None else 0.0
    out: dict = {"auc": mean, "null_auc": null_auc}
    rr: dict = {}
    if J < 2:
        _null(rr, ("se", "t", "f", "ddf", "p", "ci"),
              "only one reader: a random-readers analysis needs at least two")
    else:
        ms_r = float(((theta_r - mean) ** 2).sum() / (J - 1))
        ms_den = ms_r + J * cov2p
        rr["ms_r"] = ms_r
        if ms_den <= 0:
            _null(rr, ("se", "t", "f", "ddf", "p", "ci"),
                  "no variance: every reader and jackknife sample gave the same AUC")
        else:
            se = float(np.sqrt(ms_den / J))
            ddf = _finite_ddf(ms_den ** 2, ms_r ** 2 / (J - 1))
            tval = (mean - null_auc) / se
            dist = stats.norm if np.isinf(ddf) else stats.t(ddf)
            crit = float(dist.ppf(1 - alpha / 2))
            rr.update(se=se, t=tval, f=tval ** 2, ndf=1)
            if np.isinf(ddf):
                _null(rr, ("ddf",), "infinite: no between-reader variance observed; normal reference used")
            else:
                rr["ddf"] = ddf
            rr["p"] = float(2 * dist.sf(abs(tval)))
            clip_ci(rr, mean - crit * se, mean + crit * se)
    out["random_readers"] = rr
    fr: dict = {}
    var_fixed = (var + (J - 1) * cov2p) / J
    if var_fixed <= 0:
        _null(fr, ("se", "z", "chi2", "p", "ci"), "no case variance: every jackknife sample gave the same AUC")
    else:
        se = float(np.sqrt(var_fixed))
        z = (mean - null_auc) / se
        crit = float(stats.norm.ppf(1 - alpha / 2))
        fr.update(se=se, z=z, chi2=z ** 2, df=1, p=float(2 * stats.norm.sf(abs(z))))
        clip_ci(fr, mean - crit * se, mean + crit * se)
    out["fixed_readers"] = fr
    return out


def compare_treatments(theta: np.ndarray, comps: dict, names, *, alpha: float = 0.05) -> dict:
    """OR test of equal mean AUC across T ≥ 2 treatments and all pairwise differences.

    Random readers (Hillis 2007): F = MS(T) / (MS(T×R) + J·max(Cov2 − Cov3, 0)),
    ddf_H = (MS(T×R) + J·max(Cov2 − Cov3, 0))² / (MS(T×R)² / ((T−1)(J−1))).
    Fixed readers (Obuchowski–Rockette): χ² = (T−1)·MS(T) / (Var − Cov1 + (J−1)·max(Cov2 − Cov3, 0)),
    df = T − 1. Pairwise CIs use the same (pooled) denominators, as RJafroc does.
    """
    T, J = theta.shape
    names = [str(n) for n in names]
    grand = theta.mean()
    t_means = theta.mean(axis=1)
    r_means = theta.mean(axis=0)
    ms_t = float(J * ((t_means - grand) ** 2).sum() / (T - 1))
    out: dict = {"treatments": names,
                 "auc_per_treatment": {n: float(v) for n, v in zip(names, t_means)}}
    var, cov1, cov2, cov3 = (comps[k] for k in ("var", "cov1", "cov2", "cov3"))
    extra = max(cov2 - cov3, 0.0) if J > 1 else 0.0
    vc = {"ms_t": ms_t, **comps}
    pairs = list(itertools.combinations(range(T), 2))
    rr: dict = {"ndf": T - 1}
    if J < 2:
        vc["ms_tr"], vc["ms_tr_reason"] = None, "only one reader"
        _null(rr, ("f", "ddf", "p"), "only one reader: a random-readers analysis needs at least two")
        rr_diff_reason = rr["f_reason"]
    else:
        resid = theta - t_means[:, None] - r_means[None, :] + grand
        ms_tr = float((resid ** 2).sum() / ((T - 1) * (J - 1)))
        vc["ms_tr"] = ms_tr
        den = ms_tr + J * extra
        rr_diff_reason = None
        if den <= 0:
            _null(rr, ("f", "ddf", "p"), "no variance: the denominator MS(T×R) + J·max(Cov2 − Cov3, 0) is zero")
            rr_diff_reason = rr["f_reason"]
        else:
            f = ms_t / den
            ddf = _finite_ddf(den ** 2, ms_tr ** 2 / ((T - 1) * (J - 1)))
            rr["f"] = f
            if np.isinf(ddf):
                _null(rr, ("ddf",), "infinite: MS(T×R) is zero; chi-square reference used")
                rr["p"] = float(stats.chi2.sf(f * (T - 1), T - 1))
                tdist = stats.norm
            else:
                rr["ddf"] = ddf
                rr["p"] = float(stats.f.sf(f, T - 1, ddf))
                tdist = stats.t(ddf)
            se_d = float(np.sqrt(2 * den / J))
            crit = float(tdist.ppf(1 - alpha / 2))
    fr: dict = {"df": T - 1}
    fden = var - cov1 + (J - 1) * extra
    if fden <= 0:
        _null(fr, ("chi2", "p"), "no case variance: Var − Cov1 + (J−1)·max(Cov2 − Cov3, 0) is zero")
    else:
        fr["chi2"] = (T - 1) * ms_t / fden
        fr["p"] = float(stats.chi2.sf(fr["chi2"], T - 1))
        fse_d = float(np.sqrt(2 * fden / J))
        zcrit = float(stats.norm.ppf(1 - alpha / 2))
    diffs: dict = {}
    for i, k in pairs:
        d = float(t_means[i] - t_means[k])
        entry: dict = {"difference": d}
        if rr_diff_reason:
            _null(entry, ("se", "t", "f", "ddf", "p", "ci"), rr_diff_reason)
        else:
            tval = d / se_d
            entry.update(se=se_d, t=tval, f=tval ** 2)
            if "ddf" in rr and rr["ddf"] is not None:
                entry["ddf"] = rr["ddf"]
            else:
                _null(entry, ("ddf",), rr.get("ddf_reason", "infinite"))
            entry["p"] = float(2 * tdist.sf(abs(tval)))
            clip_ci(entry, d - crit * se_d, d + crit * se_d, lo=-1.0)
        fe: dict = {}
        if fden <= 0:
            _null(fe, ("se", "z", "chi2", "p", "ci"), fr["chi2_reason"])
        else:
            z = d / fse_d
            fe.update(se=fse_d, z=z, chi2=z ** 2, p=float(2 * stats.norm.sf(abs(z))))
            clip_ci(fe, d - zcrit * fse_d, d + zcrit * fse_d, lo=-1.0)
        entry["fixed_readers"] = fe
        diffs[f"{names[i]} - {names[k]}"] = entry
    rr["differences"] = diffs
    out["variance_components"] = vc
    out["random_readers"] = rr
    out["fixed_readers"] = fr
    return out


def mrmc_auc(scores, truth, member=None, *, treatments=None, readers=None,
             null_auc: float = 0.5, alpha: float = 0.05) -> dict:
    """Full OR analysis of empirical AUCs.

    Returns {method, n_readers, n_cases, treatments, auc_per_reader, single: {treatment:
    single_treatment(...)}, comparison: compare_treatments(...) or None (+ reason when
    there is only one treatment)}.
    """
    scores, truth, member = _check(scores, truth, member)
    T, R, K = scores.shape
    treatments = [str(t) for t in (treatments if treatments is not None else range(T))]
    readers = [str(r) for r in (readers if readers is not None else range(R))]
    theta, jk = jackknife_auc(scores, truth, member)
    cov = jackknife_covariance(jk)
    comps = covariance_components(cov, T, R)
    out: dict = {
        "method": METHOD,
        "n_readers": R, "n_cases": K,
        "n_positive": int(truth.sum()), "n_negative": int((~truth).sum()),
        "treatments": treatments,
        "auc_per_reader": {t: {r: float(theta[i, j]) for j, r in enumerate(readers)}
                           for i, t in enumerate(treatments)},
    }
    c = cov.reshape(T, R, T, R)
    single = {}
    for i, t in enumerate(treatments):
        # A treatment's own jackknife (over its K_t cases) has the same deviations as the
        # union jackknife (outside cases deviate by exactly 0); only (K−1)/K differs.
        k_t = int(member[i].sum())
        ci = c[i, :, i, :] * ((k_t - 1) / k_t) / ((K - 1) / K)
        var_t = float(np.diag(ci).mean())
        cov2_t = float(ci[~np.eye(R, dtype=bool)].mean()) if R > 1 else None
        s = single_treatment(theta[i], var_t, cov2_t, null_auc=null_auc, alpha=alpha)
        s["variance_components"] = {"var": var_t, "cov2": cov2_t} if cov2_t is not None else \
            {"var": var_t, "cov2": None, "cov2_reason": "only one reader"}
        single[t] = s
    out["single"] = single
    if T >= 2:
        out["comparison"] = compare_treatments(theta, comps, treatments, alpha=alpha)
    else:
        out["comparison"], out["comparison_reason"] = None, "only one treatment"
    return out
