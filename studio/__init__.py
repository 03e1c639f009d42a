"""The only package that joins the others: the web app, the CLI, the demo and the experiment.

    web/         the server: both Gradio apps on one FastAPI app, admin login, HTTP hardening
    reader/      the reader's page (handlers, page text, CSS and JS)
    admin/       the researcher's app, one module per tab
    cli/         `medisyn`: one module per command group, each a thin wrapper over a library call
    demo/        the embedded model's data, training and the demo study
    experiment/  one config from generator to report (the validation-study pipeline)
    format/      wording shared by the pages and the CLI (user text in Markdown, progress)

Layers inside studio (import-linter, pyproject.toml): cli > web > reader | admin >
experiment > demo > format. A sub-package imports only those below it.
"""
