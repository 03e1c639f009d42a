"""Shared test setup. Area-specific fixtures live in tests/<area>_fixtures.py."""
import os

# Nothing may reach a hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Tests live in folders that mirror the packages (tests/studies/stats/, tests/studio/,
# tests/browser/ ...); the shared fixture modules (tests/*_fixtures.py, tests/paths.py) stay
# here, importable from every folder because pytest puts this conftest's folder on sys.path.
