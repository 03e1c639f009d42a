"""`model_runtime.defaults.recommended_settings`: the one reader of a model folder's recommended
steps and guidance, with one fallback (25 / 7.0, what a GenerationRequest uses)."""
import json

import pytest


def _folder(tmp_path, medisyn=None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}', encoding="utf-8")
    if medisyn is not None:
        (folder / "medisyn.json").write_text(medisyn if isinstance(medisyn, str) else json.dumps(medisyn),
                                             encoding="utf-8")
    return folder


def test_a_folder_without_medisyn_json_gets_the_runtime_defaults(tmp_path):
    from model_runtime.defaults import recommended_settings
    from model_runtime.generation import GenerationRequest

    assert recommended_settings(_folder(tmp_path)) == (25, 7.0)
    request = GenerationRequest(prompt="x")
    assert (request.steps, request.guidance_scale) == (25, 7.0)


def test_the_folder_recommendation_wins_key_by_key(tmp_path):
    from model_runtime.defaults import recommended_settings

    folder = _folder(tmp_path, {"steps": 20, "guidance_scale": 3.0, "modalities": ["CT"]})
    assert recommended_settings(str(folder)) == (20, 3.0)
    (folder / "medisyn.json").write_text('{"steps": 12}', encoding="utf-8")
    assert recommended_settings(folder) == (12, 7.0)


@pytest.mark.parametrize("text", ["{not json", '{"steps": "many"}', '["a list"]', '{"steps": 0}'])
def test_an_unreadable_recommendation_is_one_runtime_error(tmp_path, text):
    from model_runtime.defaults import recommended_settings
    from model_runtime.errors import ModelRuntimeError

    with pytest.raises(ModelRuntimeError, match="medisyn.json"):
        recommended_settings(_folder(tmp_path, text))


def test_an_unknown_model_is_model_not_found(tmp_path):
    from model_runtime.defaults import recommended_settings
    from model_runtime.loading import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        recommended_settings(tmp_path / "missing")


def test_the_embedded_model_recommends_what_it_wrote():
    from model_runtime.defaults import recommended_settings
    from model_runtime.loading import resolve
    from studio.demo.embedded_model import read_defaults

    path, _ = resolve("embedded")
    d = read_defaults(path)
    assert recommended_settings("embedded") == (int(d.steps), float(d.guidance_scale))
