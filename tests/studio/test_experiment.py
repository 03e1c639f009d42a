"""The experiment pipeline (studio.experiment): config validation, and one small run end to end on
the images installed packages ship, with the embedded model and answers given through the study
library."""
import csv
import hashlib
import pathlib
import random
import uuid

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from studies import readers
from studies.ingest import list_studies
from studies.session import next_case, submit
import studio.experiment as E
from studio.experiment import pipeline
from studio.experiment.records import novelty_summary
from studio.experiment.split import split_groups
from studio.cli import cli
from studio.format.plain_text import plain_markdown

MINIMAL = """
name = "t"
[real]
manifest = "real.csv"
[[generator]]
name = "g"
model = "embedded"
[study]
readers = ["dr-a"]
"""


@pytest.fixture
def minimal(tmp_path):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    (tmp_path / "real.csv").write_text("path,modality,prompt\na.png,CT,x\n", encoding="utf-8")
    return tmp_path


def _error(tmp_path, text) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["experiment", "run", str(path)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("change, key", [
    (("", "colour = 1\n"), "'colour'"),                                        # unknown top-level key
    (('model = "embedded"', 'model = "embedded"\nstepz = 3'), "'generator[0].stepz'"),  # unknown, nested
    (('model = "embedded"', 'model = "embedded"\nsteps = "four"'), "'generator[0].steps'"),
    (('model = "embedded"', 'model = "embedded"\nguidance = -1'), "'generator[0].guidance'"),
    (('manifest = "real.csv"', 'manifest = "nope.csv"'), "'real.manifest'"),
    (('manifest = "real.csv"', 'manifest = "real.csv"\nholdout = 1.5'), "'real.holdout'"),
    (('readers = ["dr-a"]', 'readers = ["dr-a"]\ntasks = ["turing", "smell"]'), "'study.tasks'"),
    (('readers = ["dr-a"]', 'readers = ["dr-a", "dr-a"]'), "'study.readers'"),
    (('name = "t"', ''), "'name'"),                                             # required key missing
    (('', '[novelty]\ngate = "yes"\n'), "'novelty.gate'"),
    (('', '[novelty]\nmeasures = ["pixel", "vibes"]\n'), "'novelty.measures'"),
    (('', '[novelty]\nalpha = 1.5\n'), "'novelty.alpha'"),
    (('', '[novelty]\npercentile = 95.0\n'), "'novelty.percentile'"),             # the old rule's key
    (('', '[augment]\nn_real = 2\n'), "'augment.amounts'"),
])
def test_every_config_key_is_validated_with_one_error_line_naming_it(minimal, change, key):
    old, new = change
    text = MINIMAL.replace(old, new, 1) if old else new + MINIMAL
    if new.startswith("["):  # a table goes after the top-level keys
        text = MINIMAL + new
    assert key in _error(minimal, text)


def test_a_config_that_is_not_toml_is_one_error_line(minimal):
    assert "not valid TOML" in _error(minimal, "name = \n")


def test_split_keeps_each_group_on_one_side_and_a_reference_group_per_modality():
    rows = [{"modality": m, "group": f"{m}{g}"} for m in ("CT", "MR") for g in range(5) for _ in range(3)]
    held = split_groups(rows, 0.4, seed=3)
    assert held == split_groups(rows, 0.4, seed=3)
    for m in ("CT", "MR"):
        groups = {r["group"] for r in rows if r["modality"] == m}
        assert len(groups & held) == 2 and groups - held
    assert split_groups([{"modality": "CT", "group": "only"}], 0.9, seed=0) == set()


def _plant(run: pathlib.Path, n: int) -> list[str]:
    """Overwrite n generated images with near-copies (mirrored, brightened, with a little noise) of
    reference real images; return their names as the novelty stage lists them."""
    reference = list(csv.DictReader(open(run / "split" / "reference.csv", encoding="utf-8")))
    generated = sorted((run / "generate" / "mini" / "images").glob("*.png"))
    planted = []
    for i, target in enumerate(generated[:n]):
        real = np.asarray(Image.open(reference[-1 - i]["path"]).convert("RGB")).astype(np.int16)
        copy = real[:, ::-1] + 6 + np.random.default_rng(i).normal(0, 2, real.shape)
        Image.fromarray(np.clip(copy, 0, 255).astype(np.uint8)).save(target)
        planted.append(f"mini/images/{target.name}")
    return planted


def _answer_all(db, study, seed=0):
    rng = random.Random(seed)
    for ref in readers.list_readers(db, study):
        while (view := next_case(db, ref.reader_id)) is not None:
            q = view.pending[0]
            submit(db, ref.reader_id, view.assignment_id, q["task"], rng.choice([s["value"] for s in q["scale"]]),
                   1200, str(uuid.uuid4()))


def read_state(run, stage) -> str:
    return next(s.state for s in E.experiment_status(run).stages if s.stage == stage)


def _sha(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_small_experiment_end_to_end(tmp_path):
    config = E.write_demo_inputs(tmp_path, per_modality=3, steps=2)
    logs: list[str] = []
    first = E.run_experiment(config, until="generate", log=logs.append)
    assert first.ran == ["split", "generate"]
    run = first.out
    planted = _plant(run, 2)
    planted_bytes = {_sha(run / "generate" / p) for p in planted}

    # the tiny model's study fails its leak audit: unacknowledged, the run stops there, study closed
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("acknowledge_leak = true", "acknowledge_leak = false"), encoding="utf-8")
    with pytest.raises(E.ExperimentError, match="leak audit flags"):
        E.run_experiment(config, log=logs.append)
    assert read_state(run, "study") == "stopped" and read_state(run, "novelty") == "done"
    config.write_text(text, encoding="utf-8")

    second = E.run_experiment(config, log=logs.append)
    assert second.ran == ["study", "analyze", "report"]
    assert set(second.links) == {"dr-a", "dr-b"}  # links shown once, by this run

    # the near-copies were flagged and kept out of the study
    kept = [r["name"] for r in csv.DictReader(open(run / "novelty" / "kept.csv", encoding="utf-8"))]
    assert not set(planted) & set(kept)
    study_files = {_sha(p) for p in (run / "study" / "images").iterdir()}
    assert not planted_bytes & study_files
    db, study = E.study_of(run)
    row = next(s for s in list_studies(db) if s["name"] == study)
    assert row["n_synthetic"] == len(kept) and row["n_real"] > 0
    # ... and named in the report, in Methods, with the held-out flag rate
    md = (run / "report.md").read_text(encoding="utf-8")
    for name in planted:
        assert plain_markdown(name) in md.split("## Results")[0]  # table cells, escaped
    assert "False-flag rate on held-out real images" in md and "Wilson 95% CI): " in md
    assert "closer to the reference images than held-out real images" in md and "Mann-Whitney p = " in md
    nov = novelty_summary(run)
    assert set(planted) <= set(nov["flagged"]) and nov["holdout_rate"]["ci_wilson"] is not None
    assert "not reported" in md  # the checklist marks what the run does not know
    page = (run / "report.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and "<script src" not in page and 'rel="stylesheet"' not in page  # offline

    # readers answer through the study library; `report` redoes only the analysis and the report
    _answer_all(db, study)
    status = E.experiment_status(run)
    assert status.new_answers and all(r["finished"] for r in status.readers)
    again = E.experiment_report(run, log=logs.append)
    assert again.ran == ["analyze", "report"]
    assert "Real-or-synthetic calls" in (run / "report.md").read_text(encoding="utf-8")

    # a second run does no work
    assert E.run_experiment(config, log=logs.append).ran == []
    out = CliRunner().invoke(cli, ["experiment", "status", str(run)])
    assert out.exit_code == 0 and "novelty   done" in out.output and "dr-a" in out.output

    # the admin's Experiments tab shows the run, its readers and the report (escaped into srcdoc)
    from studio.admin import experiments as V

    table = V.stage_table(run)
    assert list(table.stage) == list(E.STAGES)
    assert set(table.state) == {"done", "not configured"}
    assert set(V.readers_table(run).reader) == {"dr-a", "dr-b"}
    frame = V.report_iframe(run)
    srcdoc = frame.split('srcdoc="', 1)[1]
    assert frame.startswith('<iframe sandbox="allow-scripts"') and "<" not in srcdoc.rsplit('"', 1)[0]

    # one generator parameter changed: only the stages downstream of it are redone
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("seed = 1", "seed = 2"), encoding="utf-8")
    job = V.start_run(config, db)  # started from the tab and cancelled at once: stops, keeps the stamps
    V.cancel_run(job.out)
    job.thread.join(120)
    assert job.finished and "cancelled" in job.log and not job.error
    assert read_state(run, "split") == "done"
    third = E.run_experiment(config, log=logs.append)
    assert [s.stage for s in third.stages if s.action == "skipped"] == ["split"]
    assert third.ran == ["generate", "novelty", "fidelity", "study", "analyze", "report"]
    assert third.study != study  # a new design is a new study; the answered one stays as it was


# ---------------------------------------------------------------- the admin's Experiments tab

class _Auth:
    def is_admin(self, user):
        return user == "admin"


def test_experiments_tab_is_admin_only_and_private(tmp_path, minimal):
    import types

    import gradio as gr

    from studio.admin import view as admin_view

    from studio.admin import experiments as experiments_view

    db = tmp_path / "studio.db"
    blocks = admin_view.build_admin_blocks(db, _Auth())
    assert all(d["api_visibility"] == "private" for d in blocks.get_config_file()["dependencies"])
    fns = {f.fn.__qualname__: f.fn for f in blocks.fns.values()}
    start = fns["build_experiments_tab.<locals>.do_start"]
    with pytest.raises(gr.Error, match="Not authorised"):
        start(str(minimal / "c.toml"), request=types.SimpleNamespace(username="dr-a", session_hash="s"))
    # the admin gets the config's one-line error, and nothing starts
    bad = minimal / "bad.toml"
    bad.write_text("colour = 1\n" + MINIMAL, encoding="utf-8")
    with pytest.raises(gr.Error, match="config key 'colour'"):
        start(str(bad), request=types.SimpleNamespace(username="admin", session_hash="s"))
    assert experiments_view.run_choices(db) == []
    assert "srcdoc" not in experiments_view.report_iframe(tmp_path)


def test_readers_app_has_nothing_of_the_experiments(tmp_path):
    import json

    from studio.admin import view as admin_view

    from studio.reader import page as reader_page

    admin = json.dumps(admin_view.build_admin_blocks(tmp_path / "studio.db", _Auth()).get_config_file(), default=str)
    reader = json.dumps(reader_page.build_reader_blocks(tmp_path / "studio.db").get_config_file(), default=str)
    assert "exp-run" in admin and "Experiments" in admin
    assert "exp-" not in reader and "xperiment" not in reader


def test_two_runs_of_one_folder_do_not_interleave(minimal):
    config = minimal / "c.toml"
    config.write_text(MINIMAL, encoding="utf-8")
    out = minimal / "runs" / "t"
    out.mkdir(parents=True)
    with pipeline._run_lock(out):  # another run holds the folder
        with pytest.raises(E.ExperimentError, match="another run of this experiment is in progress"):
            E.run_experiment(config, log=lambda m: None)
