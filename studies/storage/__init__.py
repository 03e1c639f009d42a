"""Where answers live: one SQLite file per deployment.

    database         schema and migrations, file checks, connections and read snapshots,
                     the group-commit write path
    writer_process   the single writer process the web server hands answers to
    settings         deployment settings stored in the database (the public base URL)

Imports nothing of the project above it (only `studies.errors`).
"""
