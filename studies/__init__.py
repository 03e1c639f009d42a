"""Reader studies: image I/O, storage, the study flow and statistics.

Layers (each imports only the ones below it; checked by import-linter, see pyproject.toml):

    the study flow   design, ingest, audit, contact_sheet, readers, lifecycle, washout,
                     session (the reader's next case, going back, answers), serving (a
                     reader's images), monitoring (progress and faults for the team),
                     records (a study's row, its order secret, the audit log), export, methods
    storage/         SQLite schema, connections, the group-commit writer
    stats/           pure functions of the long table
    imaging/         any image file to pixels (the seam other packages read images through)
    errors, cells    leaves: the one error base; spreadsheet-safe CSV cells
"""
