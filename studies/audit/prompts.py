"""The prompts readers may see: whether their text tells real from synthetic (a text
classifier and named tells: words or phrases, length, presence)."""
from __future__ import annotations

import collections
import math
import re
import warnings

import numpy as np
from scipy import stats

from studies.audit.rules import (
    AUC_THRESHOLD, CV_REPEATS, EFFECT_THRESHOLD, FAMILY_ALPHA, MAX_FOLDS, MIN_TO_CERTIFY,
    SOURCES, AuditItem, auc_critical, loose_key,
)

PROMPT_REMEDY = ("generate the synthetic images from the real images' own captions (pair "
                 "them by `group`), or leave the prompt out of a Turing study")
PRESENCE_THRESHOLD = 0.5
"""Difference in the share of cases that have a prompt at or above which it is a tell."""
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _ngrams(text: str, n_max: int = 5) -> set[str]:
    words = _WORD.findall(loose_key(text))
    return {" ".join(words[i:i + n]) for n in range(1, n_max + 1)
            for i in range(len(words) - n + 1)}


def audit_prompts(items: list[AuditItem], *, seed: int = 0, shown: bool = False) -> dict:
    """Whether the prompts readers may see tell real from synthetic.

    Returns {"verdict": "ok" | "flagged" | "too few" | "no prompts", "auc", "auc_threshold",
    "tells": [...], "counts", "paired", "summary", "remedy", "shown"}:
    - a logistic regression on word (1-2) and character (2-4) n-gram TF-IDF and the length,
      stratified k-fold cross-validated AUC, flagged at the image rule's threshold;
    - named tells: a word n-gram (1-5 words) used by one source only, more often than chance allows
      (Fisher's exact test, Bonferroni over all n-grams, at `FAMILY_ALPHA`); the length
      (|d| >= `EFFECT_THRESHOLD`, Welch p <= `FAMILY_ALPHA`); prompts present for one source
      much more often than for the other;
    - "ok" without the classifier when every synthetic prompt is a real image's own caption
      (of the same `group` where groups are given): the wording cannot differ.
    """
    by = {s: [it for it in items if it.source == s] for s in SOURCES}
    texts = {s: [loose_key(it.prompt) for it in by[s] if loose_key(it.prompt)]
             for s in SOURCES}
    counts = {s: len(texts[s]) for s in SOURCES}
    out = {"verdict": "no prompts", "auc": None, "auc_threshold": AUC_THRESHOLD, "tells": [],
           "counts": counts, "paired": None, "summary": "", "remedy": PROMPT_REMEDY,
           "shown": bool(shown), "cv": ""}
    if not counts["real"] and not counts["synthetic"]:
        out["summary"] = "no case has a prompt"
        return out
    tells = []
    share = {s: counts[s] / len(by[s]) if by[s] else 0.0 for s in SOURCES}
    if by["real"] and by["synthetic"] and abs(share["real"] - share["synthetic"]) >= PRESENCE_THRESHOLD:
        tells.append(f"a prompt is present for {share['synthetic']:.0%} of synthetic and "
                     f"{share['real']:.0%} of real cases")
    # Paired: the synthetic prompts are the real captions themselves.
    real_by_group = collections.defaultdict(set)
    for it in by["real"]:
        if loose_key(it.prompt):
            real_by_group[loose_key(it.group)].add(loose_key(it.prompt))
    all_real = set(texts["real"])
    synth_items = [it for it in by["synthetic"] if loose_key(it.prompt)]
    if synth_items and all_real:
        hits = sum(loose_key(it.prompt) in (
            real_by_group.get(loose_key(it.group), set()) if loose_key(it.group)
            else all_real) for it in synth_items)
        out["paired"] = round(hits / len(synth_items), 4)
    if min(counts.values()) >= 2:
        tells += _word_tells(texts)
        tells += _length_tell(texts)
        y = np.array([0] * counts["real"] + [1] * counts["synthetic"])
        out["auc_threshold"] = max(AUC_THRESHOLD, auc_critical(
            counts["real"], counts["synthetic"], FAMILY_ALPHA / 2))
        if len(set(texts["real"]) | set(texts["synthetic"])) > 1:
            auc, auc_std, cv = _prompt_auc(texts["real"] + texts["synthetic"], y, seed)
            out.update(auc=auc, auc_std=auc_std, cv=cv)
    out["tells"] = tells
    auc_flag = out["auc"] is not None and out["auc"] >= out["auc_threshold"]
    if out["paired"] == 1.0 and not tells:
        out["verdict"] = "ok"
        out["summary"] = "every synthetic prompt is a real image's own caption"
    elif auc_flag or tells:
        out["verdict"] = "flagged"
        parts = []
        if auc_flag:
            parts.append(f"a text classifier separates them (cross-validated AUC "
                         f"{out['auc']:.2f} >= {out['auc_threshold']:.2f})")
        if tells:
            parts.append("tells: " + "; ".join(tells[:5]))
        out["summary"] = "; ".join(parts) + f". Remedy: {PROMPT_REMEDY}"
    elif min(counts.values()) < MIN_TO_CERTIFY:
        out["verdict"] = "too few"
        out["summary"] = (f"nothing found, but fewer than {MIN_TO_CERTIFY} prompts in a source "
                          "cannot show that the wording is alike")
    else:
        out["verdict"] = "ok"
        out["summary"] = "no tell found and no classifier separates the wording"
    return out


def _word_tells(texts: dict[str, list[str]]) -> list[str]:
    docs = {s: [_ngrams(t) for t in texts[s]] for s in SOURCES}
    freq = {s: collections.Counter(g for d in docs[s] for g in d) for s in SOURCES}
    vocab = set(freq["real"]) | set(freq["synthetic"])
    if not vocab:
        return []
    n = {s: len(texts[s]) for s in SOURCES}
    alpha = FAMILY_ALPHA / 2 / len(vocab)
    found = []
    for g in vocab:
        a, b = freq["synthetic"].get(g, 0), freq["real"].get(g, 0)
        if a and b:
            continue  # used by both sources: not a one-source tell
        # One-sided Fisher: the chance of so lopsided a split of the cases using it.
        table = [[a, n["synthetic"] - a], [b, n["real"] - b]]
        p = stats.fisher_exact(table, alternative="greater" if a else "less").pvalue
        if p <= alpha:
            source = "synthetic" if a else "real"
            found.append((g, source, max(a, b), n[source], p))
    # Longest first; drop a shorter n-gram inside a listed one with the same count.
    found.sort(key=lambda f: (-len(f[0].split()), -f[2], f[0]))
    kept = []
    for g, source, k, total, p in found:
        if any(source == s2 and k == k2 and f" {g} " in f" {g2} " for g2, s2, k2, _, _ in kept):
            continue
        kept.append((g, source, k, total, p))
    kept.sort(key=lambda f: (-f[2] / f[3], f[0]))
    return [f'"{g}" in {k} of {total} {source} prompts and no {other} one'
            for g, source, k, total, _ in kept
            for other in ["real" if source == "synthetic" else "synthetic"]]


def _length_tell(texts: dict[str, list[str]]) -> list[str]:
    lens = {s: np.array([len(t.split()) for t in texts[s]], float) for s in SOURCES}
    a, b = lens["synthetic"], lens["real"]
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        if diff == 0:
            return []
        d, p = math.copysign(99.0, diff), 0.0
    else:
        d = diff / pooled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # near-identical lengths: precision chatter
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if abs(d) >= EFFECT_THRESHOLD and p <= FAMILY_ALPHA / 2:
        return [f"synthetic prompts are {'longer' if d > 0 else 'shorter'} (mean "
                f"{a.mean():.1f} vs {b.mean():.1f} words, d {d:+.1f})"]
    return []


def _prompt_auc(texts: list[str], y: np.ndarray, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    def lengths(docs):
        return np.array([[math.log1p(len(d)), math.log1p(len(d.split()))] for d in docs])

    # Fitted inside each fold: the vocabulary never sees the held-out prompts.
    model = make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                   token_pattern=r"(?u)\b\w+\b"),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
                   make_pipeline(FunctionTransformer(lengths), StandardScaler())),
        LogisticRegression(C=1.0, max_iter=1000))
    k = int(min(MAX_FOLDS, np.bincount(y).min()))
    aucs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(CV_REPEATS):
            folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + rep)
            proba = cross_val_predict(model, np.array(texts, dtype=object), y, cv=folds,
                                      method="predict_proba")[:, 1]
            aucs.append(roc_auc_score(y, proba))
    cv = (f"logistic regression on word 1-2-gram and character 2-4-gram TF-IDF and length, "
          f"stratified {k}-fold, mean of {CV_REPEATS} shuffles")
    return float(np.mean(aucs)), float(np.std(aucs)), cv


def format_prompts(report: dict) -> str:
    """The prompt audit as text lines."""
    if not report:
        return ""
    c = report.get("counts", {})
    head = (f"prompt text audit: {report['verdict'].upper()} (prompts: real {c.get('real', 0)}, "
            f"synthetic {c.get('synthetic', 0)}; "
            + ("shown to readers in the main cases" if report.get("shown")
               else "not shown in the main cases; training feedback shows it only when ok")
            + ")")
    lines = [head]
    if report.get("auc") is not None:
        lines.append(f"  text classifier AUC {report['auc']:.3f} (flag at >= "
                     f"{report['auc_threshold']:.2f})")
    if report.get("paired") is not None:
        lines.append(f"  synthetic prompts that are a real image's own caption: "
                     f"{report['paired']:.0%}")
    lines.extend(f"  tell: {t}" for t in report.get("tells", [])[:8])
    if report["verdict"] == "flagged":
        lines.append(f"  remedy: {report.get('remedy', PROMPT_REMEDY)}")
    elif report.get("summary"):
        lines.append(f"  {report['summary']}")
    return "\n".join(lines)
