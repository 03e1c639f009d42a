"""Transcriptions of how AUTOMATIC1111 and ComfyUI read a PNG's ``parameters`` text.

Test helpers only: they let a test check that what ``model_runtime.provenance`` writes is read
back by the two most common tools exactly as intended. Each function follows its source line
by line (parts that only configure those apps' UIs are left out, as noted).

- :func:`a1111_parse` — AUTOMATIC1111 stable-diffusion-webui, ``modules/infotext_utils.py``,
  ``parse_generation_parameters`` with its ``re_param``, ``re_imagesize`` and ``unquote``
  (commit 036500223de0a3caaa86360a8ad3ed301e4367b0). Left out: prompt-style extraction
  (``infotext_styles``) and the defaults it fills in for keys that are absent ("Clip skip",
  "Hires ...", "Schedule type" ...), which do not depend on the text.
- :func:`comfyui_import` — ComfyUI frontend (Comfy-Org/ComfyUI_frontend), ``src/scripts/pnginfo.ts``,
  ``importA1111`` (commit b4cfb80d67b5c0f67f309a84be991c042265cab0): how the text is split into
  positive prompt, negative prompt and options, and how the ``sampler`` handler picks the
  KSampler's ``sampler_name`` / ``scheduler``. ``KSAMPLER_NAMES`` are ComfyUI's
  ``comfy/samplers.py`` list (``SAMPLER_NAMES`` adds ddim, uni_pc, uni_pc_bh2). Graph building
  is left out.
"""
from __future__ import annotations

import json
import math
import re

# --- AUTOMATIC1111 ---------------------------------------------------------------------

A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def _a1111_unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_parse(x: str) -> dict:
    res: dict = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False

    *lines, lastline = x.strip().split("\n")
    if len(A1111_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    for k, v in A1111_RE_PARAM.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = _a1111_unquote(v)
            m = A1111_RE_IMAGESIZE.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            res.setdefault("_errors", []).append(f"{k}: {v}")  # A1111 prints 'Error parsing ...'
    return res


# --- ComfyUI ---------------------------------------------------------------------------

COMFY_KSAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
]
COMFY_SAMPLER_NAMES = COMFY_KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
_COMFY_OPT = re.compile(r'\s*([^:]+:\s*([^"\{].*?|".*?"|\{.*?\}))\s*(,|$)')


def _js_substring(s: str, start: int, end: int) -> str:
    # String.prototype.substring swaps its arguments when start > end
    start, end = max(0, start), max(0, end)
    if start > end:
        start, end = end, start
    return s[start:end]


def comfyui_import(parameters: str) -> dict | None:
    """What ComfyUI's importA1111 takes from the text, or None when it imports nothing."""
    p = parameters.rfind("\nSteps:")
    if p == -1:
        return None
    line = parameters[p:].split("\n")[1]
    opts: dict[str, str] = {}
    for match in _COMFY_OPT.finditer(line):
        n = match.group(0)
        if not n:
            continue
        s = n.split(":")
        if s[1].endswith(","):
            s[1] = s[1][:-1]
        opts[s[0].strip().lower()] = s[1].strip()
    marker = "\nNegative prompt:"
    p2 = parameters.rfind(marker, 0, p + len(marker))  # lastIndexOf(marker, p): a match starting at <= p
    if p2 == -1:
        return None  # no negative line: the importer builds no graph at all
    positive = parameters[:p2].strip()
    negative = _js_substring(parameters, p2 + 18, p).strip()
    out = {"positive": positive, "negative": negative, "opts": dict(opts)}
    if "sampler" in opts:
        name = opts["sampler"].lower().replace("++", "pp", 1).replace(" ", "_")
        if "karras" in name:
            name = re.sub(r"_+$", "", name.replace("karras", "", 1))
            out["scheduler"] = "karras"
        else:
            out["scheduler"] = "normal"
        found = [w for w in COMFY_SAMPLER_NAMES if w == name or w == "sample_" + name]
        out["sampler_name"] = found[0] if found else None
    if "size" in opts:
        w, h = opts["size"].split("x")
        out["width"], out["height"] = math.ceil(float(w) / 64) * 64, math.ceil(float(h) / 64) * 64
    for key in ("steps", "seed", "cfg scale"):
        if key in opts:
            out[key] = float(opts[key])
    return out
