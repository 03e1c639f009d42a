"""`medisyn study analyze` and `medisyn study power`."""
import json

import pytest
from click.testing import CliRunner

from studio.cli import cli
from studies.stats.simulate import simulate_long
from analysis_fixtures import assert_json_clean


def _csv(tmp_path, **kw):
    path = tmp_path / "long.csv"
    simulate_long(4, 30, tasks=("turing", "alignment"), seed=4, **kw).to_csv(path, index=False)
    return path


def test_analyze_responses_json(tmp_path):
    res = CliRunner().invoke(cli, ["study", "analyze", "--responses", str(_csv(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert_json_clean(data)
    assert data["turing"]["pooled"]["n"] == 120 and data["quality"] is None


def test_analyze_text_and_html(tmp_path):
    html = tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["study", "analyze", "--responses", str(_csv(tmp_path)), "--html", str(html)])
    assert res.exit_code == 0, res.output
    assert "Turing (4 readers, 30 cases): accuracy" in res.output and "MRMC AUC" in res.output
    assert html.exists() and "plotly.js v" in html.read_text(encoding="utf-8")


def test_analyze_db_path(tmp_path, monkeypatch):
    df = simulate_long(3, 20, seed=5)
    from studies import export

    monkeypatch.setattr(export, "long_table", lambda db, name: df)
    db = tmp_path / "s.db"
    db.write_bytes(b"")
    res = CliRunner().invoke(cli, ["study", "analyze", "--db", str(db), "--study", "sim", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["turing"]["n_readers"] == 3


def test_analyze_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["study", "analyze"]).exit_code == 2
    both = runner.invoke(cli, ["study", "analyze", "--responses", str(_csv(tmp_path)), "--db", "x.db"])
    assert both.exit_code == 2 and "not both" in both.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = runner.invoke(cli, ["study", "analyze", "--responses", str(bad)])
    assert res.exit_code == 1 and "required column" in res.output
    missing = runner.invoke(cli, ["study", "analyze", "--db", str(tmp_path / "none.db"), "--study", "x"])
    assert missing.exit_code == 2 and "no such database" in missing.output


def test_power_commands(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["study", "power", "--readers", "6", "--cases", "100", "--accuracy", "0.6", "--json"])
    assert res.exit_code == 0, res.output
    assert 0 < json.loads(res.output)["power"] < 1
    res = runner.invoke(cli, ["study", "power", "--cases", "100", "--accuracy", "0.6", "--target-power", "0.8"])
    assert res.exit_code == 0 and "readers = 8" in res.output
    res = runner.invoke(cli, ["study", "power", "--readers", "3", "--accuracy", "0.55", "--target-power", "0.9",
                              "--reader-sd", "0.5"])
    assert res.exit_code == 0 and "not reachable" in res.output
    res = runner.invoke(cli, ["study", "power", "--readers", "5", "--cases", "100", "--auc", "0.7", "--auc2", "0.8",
                              "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["target"] == "auc_difference"
    assert runner.invoke(cli, ["study", "power", "--readers", "5"]).exit_code == 2


def test_power_from_pilot_analysis(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["study", "analyze", "--responses", str(_csv(tmp_path, generators=("a", "b"))),
                              "--json"])
    pilot = tmp_path / "pilot.json"
    pilot.write_text(out.output)
    res = runner.invoke(cli, ["study", "power", "--readers", "8", "--cases", "200", "--auc", "0.7",
                              "--pilot", str(pilot), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["variance_source"] == "pilot"
    mrmc = json.loads(out.output)["turing"]["mrmc"]
    assert data["variance_components"]["var"] * 200 == pytest.approx(
        mrmc["variance_components"]["var"] * mrmc["n_cases"])


def test_analyze_bad_database_input_is_one_line(tmp_path):
    """Unknown study, a file that is not SQLite, an unwritable report path: `Error:` + exit 1."""
    from study_fixtures import make_study

    db, _ = make_study(tmp_path)
    runner = CliRunner()
    unknown = runner.invoke(cli, ["study", "analyze", "--db", str(db), "--study", "nope"])
    assert unknown.exit_code == 1 and "nope" in unknown.output and "Traceback" not in unknown.output
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    res = runner.invoke(cli, ["study", "analyze", "--db", str(junk), "--study", "x"])
    assert res.exit_code == 1 and res.output.startswith("Error:") \
        and "not a study database (not an SQLite file)" in res.output
    res = runner.invoke(cli, ["study", "analyze", "--responses", str(_csv(tmp_path)),
                              "--html", str(tmp_path / "no" / "such" / "dir" / "r.html")])
    assert res.exit_code == 1 and res.output.startswith("Error:") and "r.html" in res.output


@pytest.mark.parametrize("args, bad", [
    (["--readers", "10", "--cases", "50", "--accuracy", "0.6", "--alpha", "2"], "--alpha"),
    (["--readers", "10", "--cases", "50", "--auc", "1.3"], "--auc"),
    (["--readers", "10", "--cases", "50", "--auc", "0.7", "--prevalence", "1.5"], "--prevalence"),
    (["--readers", "10", "--accuracy", "0.6", "--target-power", "1.5"], "--target-power"),
    (["--readers", "0", "--cases", "50", "--accuracy", "0.6"], "--readers"),
    (["--readers", "10", "--cases", "50", "--accuracy", "0.6", "--reader-sd", "-1"], "--reader-sd"),
])
def test_power_refuses_out_of_range_inputs(args, bad):
    res = CliRunner().invoke(cli, ["study", "power", *args])
    assert res.exit_code == 2 and bad in res.output and "power =" not in res.output


@pytest.mark.parametrize("task, bad", [("turing", 7), ("turing", 0), ("turing", 2.5),
                                       ("alignment", 9), ("alignment", 0)])
def test_off_scale_rating_in_responses_csv_is_refused_with_its_row(tmp_path, task, bad):
    """An off-scale rating used to enter some statistics and be dropped by others; it is
    refused on input, naming the data row (and the CSV line), in one `Error:` line."""
    df = simulate_long(4, 30, tasks=("turing", "alignment"), seed=4)
    rows = df.index[(df["task"] == task) & ~df["training"].astype(bool)]
    target = rows[len(rows) // 2]
    df["rating"] = df["rating"].astype(float)
    df.loc[target, "rating"] = bad
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    res = CliRunner().invoke(cli, ["study", "analyze", "--responses", str(path), "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    row = df.index.get_loc(target) + 1
    assert len(lines) == 1 and f"row {row} (line {row + 1} " in lines[0]
    assert f"{task} rating {bad:g} is not on the {task} scale" in lines[0]
