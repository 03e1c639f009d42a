"""Reader studies: image I/O, storage, the study flow and statistics.

Layers (each imports only the ones below it; checked by import-linter, see pyproject.toml):

    the study flow   design (orders, subsets, pairs), ingest (create a study; staging puts
                     its files in place, ingest_checks adds its findings), audit/ (the
                     leak audit), contact_sheet, readers (invitations, tokens,
                     access, coverage), profiles (profile fields, the form, consent),
                     lifecycle (status, texts), washout, session (the reader's next case,
                     going back, answers), serving (a reader's images), monitoring (progress
                     and faults for the team), records (a study's row, its order secret,
                     the audit log), export (long and iMRMC tables, analyze_db), methods
    storage/         SQLite schema, connections and read snapshots, group-commit writes,
                     the writer process, settings
    stats/           pure functions of the long table
    imaging/         any image file to pixels (the seam other packages read images through)
    errors, cells    leaves: the one error base; spreadsheet-safe CSV cells
"""
