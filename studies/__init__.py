"""Reader studies: image I/O, storage, the study flow and statistics.

Layers (each imports only the ones below it; checked by import-linter, see pyproject.toml):

    the study flow   design         orders, subsets, pairs, options
                     ingest         create a study or add cases, all or nothing
                                    (staging: its files put in place; ingest_checks: what
                                    it finds beyond the leak audit)
                     audit/         the leak audit
                     contact_sheet  the stored stimuli on one page, for the researcher
                     readers        invitations, tokens, access, coverage
                     profiles       reader profiles, the profile form, consent
                     lifecycle      study status and the texts readers see first
                     washout        when a delayed repeat read may be served
                     session        the reader's next case, going back, answers
                                    (back_rule: when going back is allowed)
                     serving        a reader's images, stimulus faults
                     monitoring     per-reader progress and faults for the study team
                     records        a study's row, its order secret, the audit log
                     export         long and iMRMC tables, `analyze_db`
                     methods        what a methods section needs about a study
    storage/         SQLite schema, connections and read snapshots, group-commit writes,
                     the writer process, settings
    stats/           pure functions of the long table
    imaging/         any image file to pixels (the seam other packages read images through)
    errors, cells    leaves: the one error base; spreadsheet-safe CSV cells
"""
