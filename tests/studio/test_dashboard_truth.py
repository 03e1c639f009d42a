"""Dashboard truthfulness on the admin side: every undefined value says
why, the MRMC block is named, and the attention column means the same in admin and CLI."""
import re
import uuid

from click.testing import CliRunner

from studies import readers
from studies.design import StudyOptions
from studies.session import next_case, submit
from studio.admin import analysis_tab, readers_tab
from studio.cli import cli
from study_fixtures import make_study


def _answer_all(db, reader_id, pick=lambda q: q["scale"][-1]["value"]):
    while (view := next_case(db, reader_id)) is not None:
        q = view.pending[0]
        submit(db, reader_id, view.assignment_id, q["task"], pick(q), 900, str(uuid.uuid4()))


def _cells(frame):
    return [str(v) for v in frame.to_numpy().ravel()]


def test_one_reader_dashboard_names_the_block_and_every_gap_has_a_reason(tmp_path):
    db, _ = make_study(tmp_path, "pilot")
    _answer_all(db, readers.reader_for_token(db, readers.invite(db, "pilot", "dr-a")).reader_id)
    dash = analysis_tab.dashboard(db, "pilot")
    cells = _cells(dash.pooled) + _cells(dash.per_reader) + _cells(dash.agreement)
    assert cells and not any(c.strip() in ("—", "None", "nan") for c in cells)
    mrmc = dash.agreement[dash.agreement.statistic.str.contains("MRMC")].iloc[0]
    assert "MRMC on 1 fully crossed reader" in mrmc.note
    assert "random-readers test: n/a (MRMC on 1 fully crossed reader" in mrmc.note
    kappa = dash.agreement[dash.agreement.statistic.str.contains("Fleiss")].iloc[0]
    assert re.fullmatch(r"n/a \(.*one reader.*\)", kappa.value)


def test_attention_column_means_the_same_in_admin_and_cli(tmp_path):
    db, _ = make_study(tmp_path, "pilot", options=StudyOptions(attention_checks=2))
    ref = readers.reader_for_token(db, readers.invite(db, "pilot", "dr-a"))
    readers.invite(db, "pilot", "dr-b")
    # dr-a answers everything with the top of the scale: some checks pass, some may fail
    _answer_all(db, ref.reader_id)
    table = readers_tab.progress_table(db, "pilot").set_index("reader")
    out = CliRunner().invoke(cli, ["study", "progress", "--db", str(db), "--study", "pilot"])
    assert out.exit_code == 0, out.output
    assert "attention passed" in out.output.splitlines()[0]
    for reader in ("dr-a", "dr-b"):
        cell = table.loc[reader, "attention passed"]
        assert re.fullmatch(r"\d/\d of 2", cell)
        line = next(ln for ln in out.output.splitlines() if ln.startswith(reader))
        assert cell in line
    assert table.loc["dr-b", "attention passed"] == "0/0 of 2"
    assert table.loc["dr-a", "attention passed"].endswith("/2 of 2")


def test_pair_study_dashboard_shows_the_2afc_results(tmp_path):
    db, _ = make_study(tmp_path, "duo", tasks=("pair",))
    for name in ("a", "b"):
        _answer_all(db, readers.reader_for_token(db, readers.invite(db, "duo", name)).reader_id)
    agreement = analysis_tab.dashboard(db, "duo").agreement.set_index("statistic")
    row = agreement.loc["pair (2AFC): proportion correct, pooled (estimates the AUC)"]
    assert re.fullmatch(r"0\.\d+|1\.0|0", str(row.value)) or row.value in (0.0, 1.0)
    assert "Clopper–Pearson" in row.note
    assert "pair (2AFC): Fleiss' κ on right/wrong" in agreement.index
