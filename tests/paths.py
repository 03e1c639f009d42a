"""Where things are, for a test in any sub-folder of tests/ (they mirror the packages)."""
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"
