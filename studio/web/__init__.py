"""The server: both Gradio apps mounted on one FastAPI app (`app`), admin credentials and
login (`auth`), and the HTTP hardening middleware (`security`)."""
