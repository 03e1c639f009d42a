"""model_runtime.presets: MediSyn-style templates stored as data in assets/."""
import json
import re

import pytest

from model_runtime import presets
from model_runtime.registry import assets_dir

# Caption style of the MediSyn paper (GUIDE §5): the presets must reproduce these verbatim.
MEDISYN_CAPTIONS = {
    "fundus": ("fundoscopy image of the left retina with no diabetic retinopathy", {"view": "left"}),
    "oct": ("Optical coherence tomography image of a retina", {}),
    "chest-xray": ("AP Frontal Chest X-ray (CXR) of a male patient", {"view": "AP Frontal", "sex": "male"}),
    "endoscopy": ("Endoscopic image showing normal stomach", {"finding": "normal", "anatomy": "stomach"}),
}


def test_required_specialties_and_modalities_are_covered():
    assert set(presets.specialties()) >= {"radiology", "ophthalmology", "pathology", "gastroenterology",
                                          "dermatology", "surgery"}
    modalities = {p.modality for p in presets.list_presets()}
    assert modalities >= {"chest X-ray", "CT", "MRI", "ultrasound", "fundus photograph", "OCT", "histology",
                          "endoscopy", "colonoscopy", "dermoscopy", "clinical photograph", "surgical video frame"}
    assert {p.key for p in presets.list_presets("radiology")} == {"chest-xray", "ct", "mri", "ultrasound"}


@pytest.mark.parametrize("preset", presets.list_presets(), ids=lambda p: p.key)
def test_every_preset_has_the_standard_fields_and_renders_its_examples(preset):
    assert {"view", "anatomy", "finding", "age", "sex"} <= set(preset.field_names)
    assert preset.examples, "each preset shows at least one example"
    for example in preset.examples:
        assert preset.render(**example["values"]) == example["prompt"]
    default = preset.render()
    assert default and "{" not in default and "  " not in default and default == default.strip()


@pytest.mark.parametrize("key", sorted(MEDISYN_CAPTIONS))
def test_medisyn_captions_are_reproduced(key):
    caption, values = MEDISYN_CAPTIONS[key]
    assert presets.render(key, **values) == caption
    assert caption in presets.get_preset(key).example_prompts()


def test_fields_compose_and_empty_values_disappear():
    ct = presets.get_preset("ct")
    assert ct.render(view="Axial", anatomy="head", finding="an intracranial hemorrhage", age="80", sex="female") == \
        "Axial CT image of the head of an 80 year old female patient showing an intracranial hemorrhage"
    assert ct.render(view="", anatomy="chest") == "CT image of the chest"
    assert ct.render(age="45") == "Axial CT image of the chest of a 45 year old patient"
    assert ct.render(age="11", sex="male").endswith("of an 11 year old male patient")
    assert ct.render(sex="female").endswith("of a female patient")
    assert ct.field("anatomy").options[0] == "chest" and ct.field("view").default == "Axial"


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="no field"):
        presets.render("fundus", colour="red")
    with pytest.raises(ValueError, match="age"):
        presets.render("chest-xray", age="old")
    with pytest.raises(KeyError, match="unknown preset"):
        presets.get_preset("x-ray-vision")


def test_presets_are_data():
    raw = json.loads((assets_dir() / "prompt_presets.json").read_text(encoding="utf-8"))
    assert [p["key"] for p in raw["presets"]] == [p.key for p in presets.list_presets()]
    for preset in presets.list_presets():
        json.dumps(preset.as_dict())
        used = set(re.findall(r"{(\w+)}", preset.template))
        assert "patient" in used


def test_every_preset_example_names_its_own_modality():
    """The modality detector (model_runtime.modalities) recognises each preset's own captions."""
    from model_runtime import modalities

    for p in presets.list_presets():
        assert modalities.known([p.modality]) == {p.modality}
        for prompt in p.example_prompts():
            named = modalities.mentioned(prompt)
            assert p.modality in named or (p.key == "endoscopy" and named <= {"endoscopy", "colonoscopy"}), \
                (p.key, prompt, named)


def test_the_embedded_model_declares_five_of_the_preset_modalities():
    """It was trained on CT, MRI, ultrasound, fundus, histology (and bone scans): the other seven
    presets would be answered with one of those, so the Generate tab marks them."""
    from studio.admin import generate as generate_view

    declared = generate_view.model_modalities("embedded")
    marked = {key for label, key in generate_view.preset_choices(declared)
              if label.endswith(generate_view.NOT_DECLARED)}
    assert marked == {"chest-xray", "oct", "endoscopy", "colonoscopy", "dermoscopy", "skin-photo", "surgical-frame"}
    # a model that declares nothing: nothing is marked; RoentGen knows chest X-rays only
    assert not any(label.endswith(generate_view.NOT_DECLARED) for label, _ in generate_view.preset_choices(()))
    roentgen = {key for label, key in generate_view.preset_choices(generate_view.model_modalities("roentgen-v2"))
                if not label.endswith(generate_view.NOT_DECLARED)}
    assert roentgen == {"chest-xray"}


def test_a_local_folder_declares_its_modalities_in_medisyn_json(tmp_path):
    from studio.admin import generate as generate_view

    (tmp_path / "medisyn.json").write_text(json.dumps({"modalities": ["brain MRI", "OCT"]}))
    declared = generate_view.model_modalities(generate_view.LOCAL_PATH, str(tmp_path))
    assert declared == ("brain MRI", "OCT")
    unmarked = {key for label, key in generate_view.preset_choices(declared)
                if not label.endswith(generate_view.NOT_DECLARED)}
    assert unmarked == {"mri", "oct"}
