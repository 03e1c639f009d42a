"""Contrast presets per modality: the page learns a case's modality family only when real
and synthetic images of the study share that modality, so it never tells the source."""
from studio_fixtures import make_loud_study

from studies import readers, session
from studies.storage.connections import open_db, transaction
from studio.reader import handlers as reader_handlers
from studio.reader import page as reader_page


def test_preset_family_from_the_modality_words_manifests_use():
    f = reader_handlers.preset_family
    assert f("CT") == f("computed  tomography") == "ct"
    assert f("MRI") == f("MR") == "mri"
    assert f("chest x-ray") == f("CR") == f("DX") == "xray"
    assert f("Fundoscopy") == f("dermoscopy") == f("histology") == "colour"
    assert f("") == f("PET") == f("<script>") == ""


def _modality_per_case(db, token):
    """Answer every case of the reader, returning {case id: CaseView.modality}."""
    ref = readers.reader_for_token(db, token)
    seen = {}
    while (view := session.next_case(db, ref.reader_id)) is not None:
        conn = open_db(db)
        case_id = conn.execute("SELECT case_id FROM assignments WHERE id = ?",
                               [view.assignment_id]).fetchone()[0]
        conn.close()
        seen[case_id] = view.modality
        screen = reader_handlers._case_screen(db, ref, view, with_image=True, token=token)
        html = reader_page.stimulus_html(screen.image_url, screen.presets)
        family = reader_handlers.preset_family(view.modality)
        assert (f'data-presets="{family}"' in html) == bool(family)
        session.submit(db, ref.reader_id, view.assignment_id, "turing", 2, 900,
                       f"c{view.assignment_id}")
    return seen


def test_modality_reaches_the_page_only_when_both_sources_have_it(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, n_cases=10, readers=("dr-a", "dr-b"))
    conn = open_db(db)
    cases = {r["id"]: r for r in conn.query("SELECT id, source, modality FROM cases")}
    conn.close()
    seen = _modality_per_case(db, tokens["dr-a"])
    assert seen and all(seen[c] == cases[c]["modality"] for c in seen)  # shared: given

    # Now the real CT images say "PET" (say a typo in the real manifest): "PET" exists only
    # among real images and "CT" only among synthetic ones, so no case of the study gets a
    # hint (one missing on some cases only would mark them).
    conn = open_db(db)
    with transaction(conn):
        conn.execute("UPDATE cases SET modality = 'PET' WHERE source = 'real' AND modality = 'CT'")
    conn.close()
    session._MODALITY_HINT.clear()  # the studio never edits a case: its rule is cached
    seen = _modality_per_case(db, tokens["dr-b"])
    lonely = {c for c, r in cases.items() if r["modality"] == "CT"}
    assert lonely and seen and all(v == "" for v in seen.values())
