"""Where answers live: one SQLite file per deployment.

    schema          the tables and their migrations, in order; the stored timestamp format
    connections     file checks, opening (and migrating) a database, write transactions,
                    read-only connections and per-thread read snapshots (`reading`)
    group_commit    `write`: concurrent writes of one process committed together
    writer_process  the single writer process the web server hands answers to
    settings        deployment settings stored in the database (the public base URL)

Imports nothing of the project above it (only `studies.errors`).
"""
