"""Study design: power and sample size for visual Turing tests (docs/statistics.md § Power).

Accuracy (the binary call)
  Model: reader j's true accuracy a_j = expit(μ + σ·Z_j), Z_j ~ N(0, 1), with μ chosen
  so that the population mean E[a_j] equals the expected accuracy; σ (`reader_sd`, logit
  scale) is the between-reader variability. Reader j's correct calls X_j ~ Binomial(N, a_j)
  over N cases. Analysis: two-sided one-sample t-test of the per-reader accuracies X_j/N
  against 0.5 (readers are the random sample; this is what generalises to new readers).
  Analytic power: the per-reader accuracy has variance Var(a) + E[a(1 − a)]/N (moments by
  Gauss–Hermite quadrature) and the test statistic is approximated by a noncentral t with
  R − 1 df. `method="simulation"` draws the model directly. The pooled exact binomial
  test (which ignores reader variability) is reported alongside for contrast.

AUC (the 6-point rating), Obuchowski–Rockette with Hillis' ddf
  Hillis, Obuchowski & Berbaum (2011) Acad Radiol 18:129 ("Power estimation for
  multireader ROC methods: an updated and unified approach"). With J readers, the case
  error variance Var, the error covariances Cov1–3 (= r1..r3 × Var) and the reader
  (σ²_R, one treatment) or treatment×reader (σ²_TR, two treatments) variance:
    one treatment vs AUC0:  E_den = σ²_R + Var + (J−1)Cov2,   E_MS(R) = σ²_R + Var − Cov2,
                            λ = J(AUC − AUC0)² / E_den
    two treatments (Δ):     E_den = σ²_TR + Var − Cov1 + (J−1)(Cov2 − Cov3),
                            E_MS(T×R) = σ²_TR + Var − Cov1 − Cov2 + Cov3,  λ = JΔ²/(2·E_den)
    ddf = E_den² / (E_MS² / (J − 1)),  power = P(F(1, ddf; λ) > F_{1−α}(1, ddf)).
  Var for K cases comes from Hanley & McNeil (1982) Radiology 143:29 at the given AUC and
  case mix, or from a pilot analysis (its jackknife Var/Cov scaled by K_pilot/K).
  Default correlations r1 = 0.47, r2 = 0.35, r3 = 0.30 are the typical values of Rockette
  et al. (1999) Acad Radiol 6:S65 — replace them with pilot estimates when you have them.

Undefined values are None with a sibling `<key>_reason`.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

from studies.stats.proportions import null_fields as _null

DEFAULT_READER_SD = 0.3        # logit scale: ≈ ±0.07 accuracy around 60 %
DEFAULT_R = (0.47, 0.35, 0.30)  # r1, r2, r3 (Rockette et al. 1999)
DEFAULT_AUC_READER_SD = 0.05    # between-reader SD of the AUC (σ_R or σ_TR)
MAX_READERS = 1000
MAX_CASES = 1_000_000

_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(64)
_GH_W = _GH_W / _GH_W.sum()


# --- accuracy -------------------------------------------------------------------------

def _logit_mean(mu: float, sd: float) -> tuple[float, float]:
    """E[a] and E[a²] for a = expit(mu + sd·Z) (Gauss–Hermite)."""
    a = special.expit(mu + sd * _GH_X)
    return float((_GH_W * a).sum()), float((_GH_W * a * a).sum())


def reader_accuracy_model(accuracy: float, reader_sd: float) -> dict:
    """μ (logit location) and the moments of reader accuracies with mean `accuracy`."""
    if not 0 < accuracy < 1:
        raise ValueError("expected accuracy must be strictly between 0 and 1")
    if reader_sd < 0:
        raise ValueError("reader_sd must be ≥ 0")
    mu = optimize.brentq(lambda m: _logit_mean(m, reader_sd)[0] - accuracy, -40, 40, xtol=1e-12)
    m1, m2 = _logit_mean(mu, reader_sd)
    return {"mu": mu, "mean": m1, "var_between": max(m2 - m1 ** 2, 0.0), "mean_binomial_var": m1 - m2}


def _t_power(delta, df, alpha):
    """Two-sided power of a t-test with noncentrality delta."""
    delta, df = np.broadcast_arrays(np.asarray(delta, float), np.asarray(df, float))
    tc = stats.t.ppf(1 - alpha / 2, df)
    upper = stats.nct.sf(tc, df, np.abs(delta))
    lower = stats.nct.cdf(-tc, df, np.abs(delta))
    # scipy's noncentral t returns NaN far in the tails: there the power is ~1 (upper)
    # and the opposite tail ~0.
    upper = np.where(np.isnan(upper), stats.norm.sf(tc - np.abs(delta)), upper)
    lower = np.where(np.isnan(lower), 0.0, lower)
    return np.clip(upper + lower, 0.0, 1.0)


def _accuracy_power_analytic(readers, cases, model, alpha, chance):
    readers = np.asarray(readers, dtype=float)
    cases = np.asarray(cases, dtype=float)
    var = model["var_between"] + model["mean_binomial_var"] / cases
    delta = (model["mean"] - chance) / np.sqrt(var / readers)
    return _t_power(delta, readers - 1, alpha)


def _binomial_power(n: int, p: float, alpha: float, chance: float = 0.5) -> float:
    """Power of the exact two-sided binomial test of all n pooled calls (ignores readers)."""
    if chance != 0.5:
        raise ValueError("the pooled binomial power assumes chance = 0.5")
    ks = np.arange(n + 1)
    lower = ks[2 * stats.binom.cdf(ks, n, 0.5) <= alpha]
    if lower.size == 0:
        return 0.0
    c = int(lower.max())
    return float(stats.binom.cdf(c, n, p) + stats.binom.sf(n - c - 1, n, p))


def simulate_accuracy_power(readers: int, cases: int, accuracy: float, *, reader_sd: float = DEFAULT_READER_SD,
                            alpha: float = 0.05, n_sim: int = 4000, seed: int = 0, chance: float = 0.5) -> float:
    """Monte Carlo power of the per-reader t-test under the logit-normal/binomial model."""
    model = reader_accuracy_model(accuracy, reader_sd)
    rng = np.random.default_rng(seed)
    a = special.expit(model["mu"] + reader_sd * rng.standard_normal((n_sim, readers)))
    acc = rng.binomial(cases, a) / cases
    mean = acc.mean(axis=1)
    sd = acc.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - chance) / (sd / np.sqrt(readers))
    # zero spread: the test rejects whenever the mean is off chance
    t = np.where(sd == 0, np.where(mean == chance, 0.0, np.inf), t)
    return float((np.abs(t) > stats.t.ppf(1 - alpha / 2, readers - 1)).mean())


def accuracy_power(readers: int, cases: int, accuracy: float, *, reader_sd: float = DEFAULT_READER_SD,
                   alpha: float = 0.05, method: str = "analytic", n_sim: int = 4000, seed: int = 0) -> dict:
    """Power to show reader accuracy ≠ 0.5 with `readers` readers reading `cases` cases each."""
    model = reader_accuracy_model(accuracy, reader_sd)
    out: dict = {"target": "accuracy", "readers": int(readers), "cases": int(cases), "accuracy": accuracy,
                 "reader_sd_logit": reader_sd, "alpha": alpha, "method": method,
                 "test": "two-sided one-sample t-test of per-reader accuracy against 0.5 (random readers)",
                 "reader_accuracy_sd": float(np.sqrt(model["var_between"]))}
    if readers < 2:
        _null(out, ("power",), "a random-readers test needs at least two readers")
    elif cases < 1:
        _null(out, ("power",), "needs at least one case")
    elif method == "analytic":
        out["power"] = float(_accuracy_power_analytic(readers, cases, model, alpha, 0.5))
    elif method == "simulation":
        out["power"] = simulate_accuracy_power(readers, cases, accuracy, reader_sd=reader_sd, alpha=alpha,
                                               n_sim=n_sim, seed=seed)
        out["n_sim"] = n_sim
    else:
        raise ValueError(f"unknown method {method!r}")
    if readers >= 1 and cases >= 1:
        out["power_pooled_binomial"] = _binomial_power(int(readers * cases), accuracy, alpha)
        out["power_pooled_binomial_note"] = ("exact binomial test of all calls pooled: ignores between-reader "
                                             "variability, so it overstates the power to generalise to new readers")
    return out


def _solve(power_of, target, lo, hi):
    """Smallest integer n in [lo, hi] with power_of(n) ≥ target (power increasing in n), else None."""
    if power_of(hi) < target:
        return None
    if power_of(lo) >= target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power_of(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def accuracy_sample_size(accuracy: float, *, power: float = 0.8, readers: int | None = None,
                         cases: int | None = None, reader_sd: float = DEFAULT_READER_SD,
                         alpha: float = 0.05) -> dict:
    """Readers needed (given cases per reader) or cases per reader needed (given readers)."""
    if (readers is None) == (cases is None):
        raise ValueError("give exactly one of readers or cases; the other is solved for")
    model = reader_accuracy_model(accuracy, reader_sd)
    out: dict = {"target": "accuracy", "accuracy": accuracy, "power_target": power,
                 "reader_sd_logit": reader_sd, "alpha": alpha, "readers": readers, "cases": cases}
    pw = lambda r, n: float(_accuracy_power_analytic(r, n, model, alpha, 0.5))  # noqa: E731
    if cases is not None:
        n = _solve(lambda r: pw(r, cases), power, 2, MAX_READERS)
        if n is None:
            return _null(out, ("readers",), f"more than {MAX_READERS} readers needed")
        out["readers"] = n
    else:
        if readers < 2:
            return _null(out, ("cases",), "a random-readers test needs at least two readers")
        limit = pw(readers, 1e12)
        if limit < power:
            return _null(out, ("cases",), f"not reachable with {readers} readers: between-reader variability "
                                          f"(SD {reader_sd:g} on the logit scale, ≈ "
                                          f"{np.sqrt(model['var_between']):.3f} in accuracy) caps the power "
                                          f"at {limit:.3f} however many cases; add readers, or give a smaller "
                                          f"reader SD if a pilot supports one")
        n = _solve(lambda k: pw(readers, k), power, 1, MAX_CASES)
        if n is None:
            return _null(out, ("cases",), f"more than {MAX_CASES} cases needed")
        out["cases"] = n
    out["power"] = pw(out["readers"], out["cases"])
    return out


# --- AUC ------------------------------------------------------------------------------

def hanley_mcneil_var(auc: float, n_pos: int, n_neg: int) -> float:
    """Variance of the empirical AUC (Hanley & McNeil 1982, exponential approximation)."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    return (auc * (1 - auc) + (n_pos - 1) * (q1 - auc ** 2) + (n_neg - 1) * (q2 - auc ** 2)) / (n_pos * n_neg)


def components_from_mrmc(mrmc_result: dict, kind: str = "single") -> dict:
    """Pilot variance components from an analysis' `turing.mrmc` section.

    kind="single": the pooled analysis (Var, Cov2, MS(R)); σ²_R = max(MS(R) − (Var − Cov2), 0).
    kind="comparison": the generator comparison (Var, Cov1–3, MS(T×R));
    σ²_TR = max(MS(T×R) − (Var − Cov1 − Cov2 + Cov3), 0). These are Hillis' moment
    estimates. Returns {var, cov1, cov2, cov3, n_cases, reader_var, kind}.
    """
    n_cases = mrmc_result.get("n_cases")
    if kind == "comparison":
        vc = (mrmc_result.get("comparison") or {}).get("variance_components") or {}
        if any(vc.get(k) is None for k in ("var", "cov1", "cov2", "cov3", "ms_tr")):
            raise ValueError("the pilot has no generator comparison with variance components")
        reader_var = max(vc["ms_tr"] - (vc["var"] - vc["cov1"] - vc["cov2"] + vc["cov3"]), 0.0)
        return {"var": vc["var"], "cov1": vc["cov1"], "cov2": vc["cov2"], "cov3": vc["cov3"],
                "n_cases": n_cases, "reader_var": reader_var, "kind": kind}
    if kind != "single":
        raise ValueError(f"unknown kind {kind!r}")
    vc = mrmc_result.get("variance_components") or {}
    if any(vc.get(k) is None for k in ("var", "cov2", "ms_r")) or not n_cases:
        raise ValueError("the pilot's MRMC result has no usable variance components")
    reader_var = max(vc["ms_r"] - (vc["var"] - vc["cov2"]), 0.0)
    return {"var": vc["var"], "cov1": None, "cov2": vc["cov2"], "cov3": None, "n_cases": n_cases,
            "reader_var": reader_var, "kind": kind}


def _auc_components(auc, auc2, cases, prevalence, r, pilot):
    if pilot is not None:
        scale = pilot["n_cases"] / cases
        var = pilot["var"] * scale
        covs = [None if pilot.get(k) is None else pilot[k] * scale for k in ("cov1", "cov2", "cov3")]
        return var, covs
    n_pos = max(int(round(prevalence * cases)), 1)
    n_neg = max(cases - n_pos, 1)
    aucs = [auc] if auc2 is None else [auc, auc2]
    var = float(np.mean([hanley_mcneil_var(a, n_pos, n_neg) for a in aucs]))
    return var, [ri * var for ri in r]


def _auc_power_value(readers, cases, auc, auc2, null_auc, prevalence, reader_sd, r, pilot, alpha):
    var, (cov1, cov2, cov3) = _auc_components(auc, auc2, cases, prevalence, r, pilot)
    J = readers
    s2 = reader_sd ** 2
    if auc2 is None:
        e_den = s2 + var + (J - 1) * cov2
        e_ms = s2 + var - cov2
        lam = J * (auc - null_auc) ** 2 / e_den
    else:
        d = auc2 - auc
        e_den = s2 + var - cov1 + (J - 1) * (cov2 - cov3)
        e_ms = s2 + var - cov1 - cov2 + cov3
        lam = J * d ** 2 / (2 * e_den)
    ddf = e_den ** 2 / (e_ms ** 2 / (J - 1)) if e_ms > 0 else np.inf
    fcrit = stats.f.ppf(1 - alpha, 1, ddf) if np.isfinite(ddf) else stats.chi2.ppf(1 - alpha, 1)
    if lam <= 1e-12:  # scipy's noncentral F misbehaves at λ = 0; it is the central F there
        power = stats.f.sf(fcrit, 1, ddf) if np.isfinite(ddf) else stats.chi2.sf(fcrit, 1)
    else:
        power = stats.ncf.sf(fcrit, 1, ddf, lam) if np.isfinite(ddf) else stats.ncx2.sf(fcrit, 1, lam)
    power = min(max(float(power), 0.0), 1.0)
    return float(power), {"var": var, "cov1": cov1, "cov2": cov2, "cov3": cov3,
                          "e_den": e_den, "e_ms": e_ms, "ddf": ddf, "lambda": lam}


def auc_power(readers: int, cases: int, auc: float, *, auc2: float | None = None, null_auc: float = 0.5,
              prevalence: float = 0.5, reader_sd: float = DEFAULT_AUC_READER_SD, r=DEFAULT_R,
              pilot: dict | None = None, alpha: float = 0.05) -> dict:
    """OR/Hillis power: AUC vs null_auc (one generator), or AUC vs auc2 (two generators).

    cases: total cases per reader (prevalence = synthetic share). reader_sd: σ_R (one
    treatment) or σ_TR (two). pilot: components_from_mrmc() output (overrides r and
    Hanley–McNeil; its reader_var overrides reader_sd).
    """
    if pilot is not None and pilot.get("reader_var") is not None:
        reader_sd = float(np.sqrt(pilot["reader_var"]))
    out: dict = {"target": "auc" if auc2 is None else "auc_difference", "readers": int(readers),
                 "cases": int(cases), "auc": auc, "alpha": alpha, "prevalence": prevalence,
                 "reader_sd": reader_sd, "variance_source": "pilot" if pilot else "Hanley-McNeil",
                 "method": "Obuchowski–Rockette / Hillis (2011) noncentral F"}
    if auc2 is None:
        out["null_auc"] = null_auc
    else:
        out["auc2"] = auc2
        if pilot is not None and pilot.get("cov1") is None:
            raise ValueError("a two-treatment power needs a pilot comparison (Cov1, Cov3)")
    if pilot is None:
        out["r1"], out["r2"], out["r3"] = r
    if readers < 2:
        return _null(out, ("power",), "a random-readers analysis needs at least two readers")
    if cases < 2:
        return _null(out, ("power",), "needs at least two cases")
    power, comps = _auc_power_value(readers, cases, auc, auc2, null_auc, prevalence, reader_sd, r, pilot, alpha)
    out["power"] = power
    out["ddf"] = comps["ddf"] if np.isfinite(comps["ddf"]) else None
    if out["ddf"] is None:
        out["ddf_reason"] = "infinite (no reader variance): chi-square reference"
    out["noncentrality"] = comps["lambda"]
    out["variance_components"] = {k: comps[k] for k in ("var", "cov1", "cov2", "cov3")}
    for k in ("cov1", "cov3"):
        if out["variance_components"][k] is None:
            out["variance_components"][f"{k}_reason"] = "single treatment"
    return out


def auc_sample_size(auc: float, *, power: float = 0.8, readers: int | None = None, cases: int | None = None,
                    auc2: float | None = None, null_auc: float = 0.5, prevalence: float = 0.5,
                    reader_sd: float = DEFAULT_AUC_READER_SD, r=DEFAULT_R, pilot: dict | None = None,
                    alpha: float = 0.05) -> dict:
    """Readers needed (given cases) or cases needed (given readers) for the OR/Hillis AUC test."""
    if (readers is None) == (cases is None):
        raise ValueError("give exactly one of readers or cases; the other is solved for")
    if pilot is not None and pilot.get("reader_var") is not None:
        reader_sd = float(np.sqrt(pilot["reader_var"]))
    out: dict = {"target": "auc" if auc2 is None else "auc_difference", "auc": auc, "power_target": power,
                 "readers": readers, "cases": cases, "alpha": alpha, "reader_sd": reader_sd,
                 "prevalence": prevalence, "variance_source": "pilot" if pilot else "Hanley-McNeil"}
    if auc2 is not None:
        out["auc2"] = auc2
    else:
        out["null_auc"] = null_auc
    if pilot is None:
        out["r1"], out["r2"], out["r3"] = r

    def pw(j, k):
        return _auc_power_value(j, k, auc, auc2, null_auc, prevalence, reader_sd, r, pilot, alpha)[0]

    if cases is not None:
        n = _solve(lambda j: pw(j, cases), power, 2, MAX_READERS)
        if n is None:
            return _null(out, ("readers",), f"more than {MAX_READERS} readers needed")
        out["readers"] = n
    else:
        if readers < 2:
            return _null(out, ("cases",), "a random-readers analysis needs at least two readers")
        limit = pw(readers, MAX_CASES)
        if limit < power:
            return _null(out, ("cases",), f"not reachable with {readers} readers: reader variability "
                                          f"(SD {reader_sd:g} of the reader AUCs) caps the power at "
                                          f"{limit:.3f} however many cases; add readers, or give a smaller "
                                          f"reader SD (or a --pilot) if a pilot supports one")
        n = _solve(lambda k: pw(readers, k), power, 4, MAX_CASES)
        out["cases"] = n
    out["power"] = pw(out["readers"], out["cases"])
    return out


def assumptions(res: dict) -> str:
    """The assumptions behind a power or sample-size result, in one paragraph (printed with
    every answer, so "not reachable" is never given without the numbers that cause it)."""
    alpha = res.get("alpha", 0.05)
    if res.get("target") == "accuracy":
        sd = res.get("reader_sd_logit", DEFAULT_READER_SD)
        model = reader_accuracy_model(res["accuracy"], sd)
        return (f"Assumptions: mean reader accuracy {res['accuracy']:g}; readers differ with SD "
                f"{sd:g} on the logit scale (≈ {np.sqrt(model['var_between']):.3f} in accuracy; "
                f"{'default' if sd == DEFAULT_READER_SD else 'given'}, --reader-sd); every reader "
                f"reads every case, half real and half synthetic; two-sided one-sample t-test of "
                f"the per-reader accuracies against 0.5 at alpha {alpha:g} (random readers).")
    sd = res.get("reader_sd", DEFAULT_AUC_READER_SD)
    what = (f"AUC {res['auc']:g} vs {res.get('null_auc', 0.5):g}" if res.get("auc2") is None
            else f"AUC {res['auc']:g} vs {res['auc2']:g}")
    source = res.get("variance_source") or "Hanley-McNeil"
    corr = (f"error correlations r1 {res['r1']:g}, r2 {res['r2']:g}, r3 {res['r3']:g} (Rockette "
            f"et al. 1999)" if "r1" in res else "error correlations from the pilot")
    return (f"Assumptions: {what}; reader AUCs differ with SD {sd:g} "
            f"({'default' if sd == DEFAULT_AUC_READER_SD else 'given or from the pilot'}, "
            f"--reader-sd); synthetic share {res.get('prevalence', 0.5):g} of the cases; case "
            f"variance from {source}; {corr}; Obuchowski–Rockette test with Hillis ddf at alpha "
            f"{alpha:g} (random readers and cases).")
