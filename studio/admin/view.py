"""The researcher's app (mounted at `/admin`, behind the admin login): `build_admin_blocks`
lays out the tabs and wires their events.

Tabs: Studies (`studies_tab`), New study (`new_study_tab`), Readers (`readers_tab`), Study
settings (`settings_tab`), Analysis (`analysis_tab`), Generate (`generate`), Evaluate
(`evaluate`) and Experiments (`experiments`). Everything a tab does is a plain function in
its module (tested without a browser) over the `studies` API; the Gradio wrappers here only
check the admin session and render. The first five tabs are laid out here, not in their
modules, because their events update one another (inviting a reader refreshes the Studies
table, creating a study the study picker).
"""
from __future__ import annotations

import pathlib
import tempfile

import gradio as gr
import pandas as pd

from studies import readers as readers_mod
from studies.design import TASKS
from studies.errors import StudyError
from studio.admin import analysis_tab, new_study_tab, readers_tab, settings_tab, studies_tab
from studio.format.plain_text import plain_markdown

# The Log out button POSTs (same-origin, so it passes the cross-origin check), then shows
# the login form (logout.js); paths relative to the admin page (/admin/), so a proxy's path
# prefix is kept. A page script rather than a Gradio event: no handler, no API endpoint.
ADMIN_HEAD = ("<script>\n" + pathlib.Path(__file__).with_name("logout.js").read_text(encoding="utf-8")
              + "</script>")

ADMIN_CSS = """
footer { display: none !important; }
#audit textarea, #audit pre { font-family: ui-monospace, monospace; font-size: 0.85rem; }
"""


def error_markdown(exc) -> str:
    """A refused action's message, for the message box beside the control that refused."""
    return f"❌ **Error:** {plain_markdown(str(exc))}"


def base_url_of(request, configured: str | None) -> str:
    """Where readers reach the studio: configured, else the host the admin used."""
    if configured:
        return configured
    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    proto = headers.get("x-forwarded-proto") or "http"
    return f"{proto}://{host}/"


def build_admin_blocks(db_path, admin_auth, *, model=None, base_url=None, batches_dir=None):
    from studio.admin import generate as generate_view
    from studio.admin.generate_blocks import build_generate_tab

    db_path = str(db_path)

    def guard(request: gr.Request | None) -> str:
        user = getattr(request, "username", None) if request is not None else None
        if not admin_auth.is_admin(user):
            raise gr.Error("Not authorised.")
        return user

    def friendly(fn):
        """Show a StudyError as a message instead of a stack trace."""
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except StudyError as exc:
                raise gr.Error(str(exc)) from None
        return wrapper

    task_choices = [(f"{t.name} — {t.question}", t.name) for t in TASKS.values()]

    with gr.Blocks(title="MediSyn Studio — researcher", analytics_enabled=False,
                   delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Row():
            gr.Markdown("# MediSyn Studio")
            study_dd = gr.Dropdown(label="Study", choices=[], value=None, scale=2,
                                   elem_id="study-select", allow_custom_value=False)
            refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=90)
            # a POST (ADMIN_HEAD): a cross-site GET must not end the session
            gr.Button("Log out", scale=0, min_width=90, elem_id="logout")
        with gr.Tabs(elem_id="admin-tabs"):
            with gr.Tab("Studies", id="studies"):
                table = gr.Dataframe(interactive=False, elem_id="studies-table", wrap=True)
                overview = gr.Markdown(elem_id="overview")
                audit_box = gr.Textbox(label="Leak audit", lines=14, interactive=False,
                                       elem_id="audit", buttons=["copy"])
                sheet_btn = gr.Button("Show the contact sheet (the stimuli as readers see "
                                      "them)", elem_id="contact-sheet-btn")
                sheet = gr.HTML(elem_id="contact-sheet")
            with gr.Tab("New study", id="new"):
                with gr.Row():
                    name = gr.Textbox(label="Study name", elem_id="new-name")
                    size = gr.Textbox(label="Stimulus size: auto, or pixels (auto: the largest "
                                      "multiple of 64 in 256-1024 that enlarges at most half "
                                      "of the images)", value="auto", elem_id="new-size")
                tasks = gr.CheckboxGroup(task_choices, value=["turing"], label="Tasks")
                with gr.Row():
                    training = gr.Number(label="Training cases", value=0, precision=0, minimum=0)
                    repeat = gr.Slider(0, 0.5, value=0.0, step=0.05,
                                       label="Repeated fraction (intra-reader)",
                                       elem_id="new-repeat")
                    attention = gr.Number(label="Attention checks", value=0, precision=0,
                                          minimum=0)
                    counterbalance = gr.Checkbox(label="Counterbalance the tasks after turing (turing is always first)")
                    seed = gr.Number(label="Seed (0: random secret; any other value makes the "
                                     "order predictable — testing only)", value=0, precision=0)
                with gr.Row():
                    cases_per_reader = gr.Number(
                        label="Cases per reader (0: every case; pairs for the pair task)",
                        value=0, precision=0, minimum=0, elem_id="new-cases-per-reader")
                    readers_per_case = gr.Number(
                        label="Target readers per case (0: none)", value=0, precision=0,
                        minimum=0, elem_id="new-readers-per-case")
                    repeat_after = gr.Textbox(
                        label="Repeat after (wash-out, e.g. 7d, 36h; empty: same session)",
                        value="", elem_id="new-repeat-after")
                    skip_unreadable = gr.Checkbox(
                        label="Skip unreadable images and list them (default: all or nothing)",
                        elem_id="new-skip-unreadable")
                source = gr.Radio(["Upload a zip", "Folder on the server", "Generation batches"],
                                  value="Upload a zip", label="Images from")
                with gr.Group(visible=True) as zip_group:
                    upload = gr.File(label="Zip: a manifest CSV (path, source, modality, prompt"
                                     "[, generator, case_id, group]) with its images, or "
                                     "real/ and synthetic/ folders", file_types=[".zip"],
                                     type="filepath")
                with gr.Group(visible=False) as folder_group:
                    folder = gr.Textbox(label="Manifest CSV or folder (real/, synthetic/) on "
                                        "the server")
                with gr.Group(visible=False) as batch_group:
                    batches = gr.CheckboxGroup([], label="Generation batches")
                    real_folder = gr.Textbox(label="Real images folder on the server "
                                             "(needed for the turing task)")
                create_btn = gr.Button("Create study (runs the leak audit)", variant="primary",
                                       elem_id="create")
                created = gr.Markdown()
                created_audit = gr.Textbox(label="Leak audit", lines=12, interactive=False)
            with gr.Tab("Readers", id="readers"):
                invite_overview = gr.Markdown()
                with gr.Row():
                    reader_name = gr.Textbox(label="Reader name", elem_id="reader-name")
                    ack = gr.Checkbox(label="I have read the leak audit; open the study anyway",
                                      visible=False)
                    reissue = gr.Checkbox(label="Reissue link (old link stops working)")
                invite_btn = gr.Button("Invite", variant="primary", elem_id="invite")
                invite_msg = gr.Markdown(elem_id="invite-msg")
                link = gr.Textbox(label="Personal link (copy and send; shown once)",
                                  interactive=False, buttons=["copy"], elem_id="reader-link")
                progress = gr.Dataframe(label="Progress (refreshes every 5 s)",
                                        interactive=False, elem_id="progress-table")
                faults = gr.Markdown(elem_id="stimulus-faults")
                timer = gr.Timer(5.0)
                with gr.Accordion("Invite from a CSV, links, deactivation", open=False):
                    readers_csv = gr.File(label="Readers CSV: a `reader` column, optional "
                                          "specialty, years_experience and the study's own "
                                          "profile fields", file_types=[".csv"],
                                          type="filepath", elem_id="readers-csv")
                    csv_ack = gr.Checkbox(label="I have read the leak audit; open the study "
                                          "anyway", visible=False, elem_id="csv-ack")
                    csv_btn = gr.Button("Invite everyone in the CSV", elem_id="invite-csv")
                    csv_msg = gr.Markdown(elem_id="csv-msg")
                    csv_links = gr.Textbox(label="reader,link (copy and send; shown once)",
                                           lines=6, interactive=False, buttons=["copy"],
                                           elem_id="csv-links")
                    readers_df = gr.Dataframe(label="Readers (links are never stored: reissue "
                                              "to give a new one)", interactive=False,
                                              elem_id="readers-table")
                    with gr.Row():
                        manage_name = gr.Textbox(label="Reader", elem_id="manage-reader")
                        deactivate_btn = gr.Button("Deactivate (link stops working)",
                                                   elem_id="deactivate")
                        reactivate_btn = gr.Button("Reactivate", elem_id="reactivate")
                    manage_msg = gr.Markdown(elem_id="manage-msg")
            with gr.Tab("Study settings", id="settings"):
                status_md = gr.Markdown(elem_id="study-status")
                with gr.Row():
                    close_btn = gr.Button("Close (readers see a closed page)", elem_id="close-study")
                    reopen_btn = gr.Button("Reopen", elem_id="reopen-study")
                    archive_btn = gr.Button("Archive", elem_id="archive-study")
                status_msg = gr.Markdown(elem_id="status-msg")
                reader_title_box = gr.Textbox(
                    label="Title readers see (empty: \"Reader study\"; the study's name is "
                          "never shown to readers)", max_lines=1, elem_id="reader-title")
                instructions_box = gr.Textbox(label="Instructions shown before the first case",
                                              lines=6, elem_id="instructions")
                consent_box = gr.Textbox(label="Consent text (empty: no consent step)", lines=4,
                                         elem_id="consent")
                fields_box = gr.Textbox(label="Extra reader profile fields (comma-separated, "
                                        "e.g. site,country)", elem_id="profile-fields")
                ask_profile_box = gr.Checkbox(
                    label="Readers fill in their profile before the first case (specialty, "
                          "years of experience and the extra fields; all required)",
                    elem_id="ask-profile")
                save_texts_btn = gr.Button("Save texts", elem_id="save-texts")
                save_texts_msg = gr.Markdown(elem_id="save-texts-msg")
                # Going back (studies.session.go_back): saved as soon as it is ticked.
                allow_back_box = gr.Checkbox(label="Readers may go back to the previous case "
                                             "and change their answer", elem_id="allow-back")
                allow_back_md = gr.Markdown(elem_id="allow-back-status")
            with gr.Tab("Analysis", id="analysis"):
                analyze_btn = gr.Button("Run analysis", variant="primary", elem_id="analyze")
                note = gr.Markdown()
                pooled = gr.Dataframe(label="Real vs synthetic (turing), pooled",
                                      interactive=False, elem_id="pooled")
                per_reader = gr.Dataframe(label="Per reader", interactive=False,
                                          elem_id="per-reader")
                agreement = gr.Dataframe(label="Agreement and MRMC", interactive=False)
                plots = []
                for _ in range(3):
                    with gr.Row():
                        plots += [gr.Plot(visible=False), gr.Plot(visible=False)]
                with gr.Accordion("Full result (JSON)", open=False):
                    result_json = gr.JSON()
                export_btn = gr.Button("Prepare downloads (long, iMRMC, HTML report)",
                                       elem_id="export")
                export_msg = gr.Markdown(elem_id="export-msg")
                downloads = gr.File(label="Downloads", file_count="multiple",
                                    interactive=False, elem_id="downloads")
            with gr.Tab("Generate", id="generate"):
                gen = build_generate_tab(db_path, guard, model=model, batches_dir=batches_dir)
            with gr.Tab("Evaluate", id="evaluate"):
                from studio.admin import evaluate as evaluate_view

                evaluate = evaluate_view.build_evaluate_tab(db_path, guard, batches_dir=batches_dir)
            with gr.Tab("Experiments", id="experiments"):
                from studio.admin import experiments as experiments_view

                experiments_view.build_experiments_tab(db_path, guard)

        admin_events = dict(api_visibility="private")

        def reported(n_outputs: int, at: int = 0, clear: tuple[int, ...] = ()):
            """Like `friendly`, but a refused action's message goes to its own message box
            (output `at`) and the outputs in `clear` are emptied (a stale link or success
            message must not stand beside an error); the rest stay as they were. Gradio
            marks every output of a failed event with an "Error" pill, unrelated ones too."""
            import functools

            def deco(fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    try:
                        return fn(*args, **kwargs)
                    except StudyError as exc:
                        out = [gr.update() for _ in range(n_outputs)]
                        for i in clear:
                            out[i] = gr.update(value=None)
                        out[at] = error_markdown(exc)
                        return out[0] if n_outputs == 1 else tuple(out)
                return wrapper
            return deco

        @friendly
        def refresh(current, request: gr.Request):
            guard(request)
            names = studies_tab.study_names(db_path)
            value = current if current in names else (names[0] if names else None)
            tbl = studies_tab.studies_table(db_path) if names else pd.DataFrame()
            return (gr.update(choices=names, value=value), tbl,
                    gr.update(choices=generate_view.batch_choices(db_path, batches_dir)))

        @friendly
        def show_study(study, request: gr.Request):
            guard(request)
            if not study:
                return ("No study yet: create one in **New study**.", "", "",
                        gr.update(visible=False), pd.DataFrame(), "", gr.update(visible=False))
            md, text, leak = studies_tab.study_overview(db_path, study)
            # The invite gate's tick box, until the flagged audit is acknowledged.
            leak = leak and not (readers_mod.leak_acknowledgement(db_path, study) or {}).get(
                "acknowledged")
            return (md, text, md, gr.update(visible=leak, value=False),
                    readers_tab.progress_table(db_path, study), readers_tab.faults_markdown(db_path, study),
                    gr.update(visible=leak, value=False))

        @friendly
        def show_sheet(study, request: gr.Request):
            guard(request)
            if not study:
                raise StudyError("choose a study first")
            return studies_tab.contact_sheet_frame(db_path, study)

        @friendly
        def clear_sheet(request: gr.Request):
            guard(request)
            return ""

        @friendly
        def switch_source(choice, request: gr.Request):
            guard(request)
            return (gr.update(visible=choice == "Upload a zip"),
                    gr.update(visible=choice == "Folder on the server"),
                    gr.update(visible=choice == "Generation batches"))

        @reported(5, at=0, clear=(1,))
        def create(name_, size_, tasks_, training_, repeat_, attention_, cb_, seed_, cpr_, rpc_,
                   repeat_after_, skip_, source_, upload_, folder_, batches_, real_folder_,
                   request: gr.Request):
            user = guard(request)
            opts = new_study_tab.study_options(tasks_, training_cases=training_, repeat_fraction=repeat_,
                                 attention_checks=attention_, counterbalance=cb_, seed=seed_,
                                 cases_per_reader=cpr_, readers_per_case=rpc_,
                                 repeat_after=repeat_after_)
            kw = dict(size=new_study_tab.size_of(size_), options=opts, actor=f"admin:{user}",
                      skip_unreadable=bool(skip_))
            if source_ == "Upload a zip":
                summary = new_study_tab.create_from_zip(db_path, name_, upload_, **kw)
            elif source_ == "Folder on the server":
                summary = new_study_tab.create_from_folder(db_path, name_, folder_, **kw)
            else:
                summary = new_study_tab.create_from_batches(db_path, name_, batches_, real_folder=real_folder_, **kw)
            names = studies_tab.study_names(db_path)
            return (new_study_tab.summary_markdown(summary), summary.audit_text,
                    gr.update(choices=names, value=summary.name), studies_tab.studies_table(db_path), None)

        @reported(5, at=4, clear=(0,))
        def do_invite(study, reader, ack_, reissue_, request: gr.Request):
            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            url = readers_tab.invite_reader(db_path, study, reader, base_url_of(request, base_url),
                                acknowledge_leak=ack_, reissue=reissue_, actor=f"admin:{user}")
            md, _, _ = studies_tab.study_overview(db_path, study)
            return (url, readers_tab.progress_table(db_path, study), md, studies_tab.studies_table(db_path),
                    f"✅ Invited **{plain_markdown(reader.strip())}**: copy the link below.")

        @reported(5, at=4, clear=(0,))
        def do_invite_csv(study, upload_, ack_, request: gr.Request):
            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            lines = readers_tab.invite_from_csv(db_path, study, upload_, base_url_of(request, base_url),
                                    acknowledge_leak=ack_, actor=f"admin:{user}")
            n = len([ln for ln in str(lines).splitlines() if ln.strip()])
            return (lines, readers_tab.readers_table(db_path, study), readers_tab.progress_table(db_path, study), None,
                    f"✅ Invited {n} reader(s): copy their links below.")

        def _switch_reader(active):
            @reported(2, at=1)
            def handler(study, reader, request: gr.Request):
                user = guard(request)
                if not study:
                    raise StudyError("choose a study first")
                readers_mod.set_reader_active(db_path, study, reader, active,
                                              actor=f"admin:{user}")
                return (readers_tab.readers_table(db_path, study),
                        f"✅ {plain_markdown(reader.strip())} "
                        + ("reactivated: their link works again." if active else
                           "deactivated: their link no longer works (answers kept)."))
            return handler

        def _set_status(status):
            @reported(3, at=2)
            def handler(study, request: gr.Request):
                from studies.lifecycle import set_status

                user = guard(request)
                if not study:
                    raise StudyError("choose a study first")
                set_status(db_path, study, status, actor=f"admin:{user}")
                return settings_tab.study_settings(db_path, study)[0], studies_tab.studies_table(db_path), ""
            return handler

        @friendly
        def show_settings(study, request: gr.Request):
            guard(request)
            if not study:
                return "", "", "", "", False, pd.DataFrame()
            return (*settings_tab.study_settings(db_path, study), readers_tab.readers_table(db_path, study))

        @reported(6, at=5)
        def save_texts(study, instructions_, consent_, fields_, ask_profile_, title_,
                       request: gr.Request):
            import datetime as _dt

            from studies.lifecycle import set_texts

            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            texts = set_texts(db_path, study, instructions=instructions_ or "",
                              consent=consent_ or "", profile_fields=fields_ or "",
                              ask_profile=bool(ask_profile_), title=title_ or "",
                              actor=f"admin:{user}")
            at = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S UTC")
            return (*settings_tab.study_settings(db_path, study),
                    f"✅ Saved at {at}: instructions {len(texts.instructions)} characters, "
                    f"consent {len(texts.consent) or 'none'}"
                    f"{' characters' if texts.consent else ''}, profile form "
                    f"{'on' if texts.ask_profile else 'off'}, reader title "
                    f"{plain_markdown(texts.reader_title) if texts.reader_title else 'none'}.")

        @friendly
        def show_reader_title(study, request: gr.Request):
            guard(request)
            return settings_tab.reader_title_setting(db_path, study) if study else ""

        @friendly
        def show_back(study, request: gr.Request):
            guard(request)
            return settings_tab.back_setting(db_path, study) if study else False, ""

        @reported(1)
        def save_back(study, allowed, request: gr.Request):
            user = guard(request)
            return settings_tab.save_back_setting(db_path, study, allowed, actor=f"admin:{user}")

        def tick(study, request: gr.Request):
            guard(request)
            if not study:
                return gr.update(), gr.update()
            try:
                return readers_tab.progress_table(db_path, study), readers_tab.faults_markdown(db_path, study)
            except StudyError:
                return gr.update(), gr.update()

        @reported(5 + len(plots), at=0)
        def run_analysis(study, request: gr.Request):
            guard(request)
            if not study:
                raise StudyError("choose a study first")
            d = analysis_tab.dashboard(db_path, study)
            plot_updates = []
            for i in range(len(plots)):
                if i < len(d.figures):
                    title, fig = d.figures[i]
                    plot_updates.append(gr.update(value=fig, visible=True, label=title))
                else:
                    plot_updates.append(gr.update(value=None, visible=False))
            return [d.note, gr.update(value=d.pooled, label=d.pooled_label),
                    gr.update(value=d.per_reader, label=d.per_reader_label), d.agreement,
                    *plot_updates, d.result]

        @reported(2, at=1, clear=(0,))
        def do_export(study, request: gr.Request):
            from studies.export import no_imrmc_reason

            guard(request)
            if not study:
                raise StudyError("choose a study first")
            out = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-export-"))
            paths = analysis_tab.export_files(db_path, study, out)
            note = ("" if any(p.name.endswith("-imrmc.csv") for p in paths) else
                    "No iMRMC file: " + plain_markdown(no_imrmc_reason(db_path, study)) + ".")
            return [str(p) for p in paths], note

        demo.load(refresh, [study_dd], [study_dd, table, batches], **admin_events)
        refresh_btn.click(refresh, [study_dd], [study_dd, table, batches], **admin_events)
        study_dd.change(show_study, [study_dd],
                        [overview, audit_box, invite_overview, ack, progress, faults, csv_ack],
                        **admin_events)
        source.change(switch_source, [source], [zip_group, folder_group, batch_group],
                      **admin_events)
        sheet_btn.click(show_sheet, [study_dd], [sheet], **admin_events)
        study_dd.change(clear_sheet, None, [sheet], **admin_events)
        create_btn.click(create, [name, size, tasks, training, repeat, attention, counterbalance,
                                  seed, cases_per_reader, readers_per_case, repeat_after,
                                  skip_unreadable, source, upload, folder, batches, real_folder],
                         [created, created_audit, study_dd, table, upload],
                         concurrency_limit=1, concurrency_id="create", **admin_events)
        invite_btn.click(do_invite, [study_dd, reader_name, ack, reissue],
                         [link, progress, invite_overview, table, invite_msg], **admin_events)
        timer.tick(tick, [study_dd], [progress, faults], show_progress="hidden", **admin_events)
        study_dd.change(show_settings, [study_dd],
                        [status_md, instructions_box, consent_box, fields_box, ask_profile_box,
                         readers_df],
                        **admin_events)
        csv_btn.click(do_invite_csv, [study_dd, readers_csv, csv_ack],
                      [csv_links, readers_df, progress, readers_csv, csv_msg], **admin_events)
        deactivate_btn.click(_switch_reader(False), [study_dd, manage_name],
                             [readers_df, manage_msg], **admin_events)
        reactivate_btn.click(_switch_reader(True), [study_dd, manage_name],
                             [readers_df, manage_msg], **admin_events)
        for btn, status in ((close_btn, "closed"), (reopen_btn, "open"),
                            (archive_btn, "archived")):
            btn.click(_set_status(status), [study_dd], [status_md, table, status_msg],
                      **admin_events)
        save_texts_btn.click(save_texts, [study_dd, instructions_box, consent_box, fields_box,
                                          ask_profile_box, reader_title_box],
                             [status_md, instructions_box, consent_box, fields_box,
                              ask_profile_box, save_texts_msg],
                             **admin_events)
        study_dd.change(show_back, [study_dd], [allow_back_box, allow_back_md], **admin_events)
        study_dd.change(show_reader_title, [study_dd], [reader_title_box], **admin_events)
        allow_back_box.input(save_back, [study_dd, allow_back_box], [allow_back_md],
                             **admin_events)
        analyze_btn.click(run_analysis, [study_dd],
                          [note, pooled, per_reader, agreement, *plots, result_json],
                          concurrency_limit=2, concurrency_id="analysis", **admin_events)
        export_btn.click(do_export, [study_dd], [downloads, export_msg], concurrency_id="analysis",
                         **admin_events)
        gen.wire(study_dd)
        evaluate.wire(study_dd)
    return demo
