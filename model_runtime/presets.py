"""MediSyn-style prompt presets (``assets/prompt_presets.json``).

A preset is a short template per modality — "fundoscopy image of the {view} {anatomy}{finding}"
— with fields for view, anatomy, finding and the patient attributes age and sex, so a user
picks from menus and gets a caption in the style the MediSyn paper trained on, e.g.
"fundoscopy image of the left retina with no diabetic retinopathy".

Rendering rule: ``{name}`` becomes the field's ``format`` with ``{value}`` filled in, or nothing
when the value is empty; ``{patient}`` is built from age and sex ("45 year old female") and
rendered with the preset's ``patient_format`` ("{a}" there becomes "a" or "an").
Runs of spaces are collapsed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import string

from model_runtime.registry import assets_dir

PATIENT_FIELDS = ("age", "sex")


@dataclasses.dataclass(frozen=True)
class PresetField:
    name: str
    label: str
    options: tuple[str, ...] = ()
    default: str = ""
    format: str = "{value}"

    def render(self, value: str) -> str:
        value = str(value).strip()
        return self.format.format(value=value) if value else ""


@dataclasses.dataclass(frozen=True)
class Preset:
    key: str
    label: str
    specialty: str
    modality: str
    template: str
    fields: tuple[PresetField, ...]
    patient_format: str
    examples: tuple[dict, ...] = ()

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> PresetField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"preset {self.key!r} has no field {name!r} (fields: {', '.join(self.field_names)})")

    def defaults(self) -> dict[str, str]:
        return {f.name: f.default for f in self.fields}

    def render(self, **values: str) -> str:
        """The prompt for ``values`` (missing fields take their defaults; None or "" omits a field)."""
        unknown = set(values) - set(self.field_names)
        if unknown:
            raise ValueError(f"preset {self.key!r} has no field(s) {sorted(unknown)}; "
                             f"fields: {', '.join(self.field_names)}")
        merged = self.defaults()
        merged.update({k: ("" if v is None else str(v)) for k, v in values.items()})
        parts = {f.name: f.render(merged[f.name]) for f in self.fields if f.name not in PATIENT_FIELDS}
        parts["patient"] = self._patient(merged.get("age", ""), merged.get("sex", ""))
        text = self.template.format_map(parts)
        return re.sub(r" {2,}", " ", text).strip()

    def _patient(self, age: str, sex: str) -> str:
        age, sex = str(age).strip(), str(sex).strip()
        if age:
            if not age.isdigit() or not 0 <= int(age) <= 120:
                raise ValueError(f"age must be a whole number of years (0-120), got {age!r}")
            age = f"{int(age)} year old"
        who = " ".join(p for p in (age, sex) if p)
        return self.patient_format.format(value=who, a=_article(who)) if who else ""

    def example_prompts(self) -> list[str]:
        return [e["prompt"] for e in self.examples]

    def as_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "specialty": self.specialty, "modality": self.modality,
                "template": self.template, "patient_format": self.patient_format,
                "fields": [dataclasses.asdict(f) | {"options": list(f.options)} for f in self.fields],
                "examples": [dict(e) for e in self.examples]}


def _article(phrase: str) -> str:
    """'an' before a vowel sound ("an 80 year old", "an 11 year old"), else 'a'."""
    word = phrase.split(" ", 1)[0].lower()
    if word.isdigit():
        return "an" if word.startswith("8") or word in ("11", "18") else "a"
    return "an" if word[:1] in tuple("aeio") else "a"


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> tuple[Preset, ...]:
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    patient = data.get("patient_fields", {})
    presets = []
    for raw in data["presets"]:
        fields = [_field(name, spec) for name, spec in raw["fields"].items()]
        fields += [_field(name, spec) for name, spec in patient.items() if name not in raw["fields"]]
        preset = Preset(key=raw["key"], label=raw["label"], specialty=raw["specialty"], modality=raw["modality"],
                        template=raw["template"], fields=tuple(fields),
                        patient_format=raw.get("patient_format", " of {a} {value} patient"),
                        examples=tuple(raw.get("examples", ())))
        _check_template(preset, path)
        presets.append(preset)
    return tuple(presets)


def _field(name: str, spec: dict) -> PresetField:
    return PresetField(name=name, label=spec.get("label", name), options=tuple(spec.get("options", ())),
                       default=spec.get("default", ""), format=spec.get("format", "{value}"))


def _check_template(preset: Preset, path: str) -> None:
    used = {name for _, name, _, _ in string.Formatter().parse(preset.template) if name}
    allowed = (set(preset.field_names) - set(PATIENT_FIELDS)) | {"patient"}
    if used - allowed:
        raise ValueError(f"{path}: preset {preset.key!r} template uses undefined field(s) {sorted(used - allowed)}")


def _presets() -> tuple[Preset, ...]:
    path = assets_dir() / "prompt_presets.json"
    return _read(str(path), path.stat().st_mtime)


def list_presets(specialty: str | None = None) -> list[Preset]:
    """All presets in file order, or those of one specialty."""
    return [p for p in _presets() if specialty is None or p.specialty == specialty]


def specialties() -> list[str]:
    seen: list[str] = []
    for p in _presets():
        if p.specialty not in seen:
            seen.append(p.specialty)
    return seen


def get_preset(key: str) -> Preset:
    for p in _presets():
        if p.key == key:
            return p
    raise KeyError(f"unknown preset {key!r}; presets: {', '.join(p.key for p in _presets())}")


def render(key: str, **values: str) -> str:
    """Shortcut: ``render("fundus", view="left")``."""
    return get_preset(key).render(**values)
