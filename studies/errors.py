"""Errors raised by the reader-study core. Each message is one line a user can act on."""
from __future__ import annotations


class StudyError(Exception):
    """Base class: bad input or a request the study cannot honour."""


class ManifestError(StudyError):
    """A manifest (or --images folder) is malformed; the message names the row and column."""


class IngestError(StudyError):
    """An image or the study as a whole cannot be ingested; the message names the file."""


class StudyExists(StudyError):
    """A study with that name already exists in the database."""


class DatabaseNotFound(StudyError):
    """The study database file does not exist (only `create_study` creates one)."""


class NotAStudyDatabase(StudyError):
    """The file at the database path is not a study database (empty, not SQLite, or
    another program's SQLite file); it is never overwritten."""


class StudyNotFound(StudyError):
    """No study with that name."""


class ReaderError(StudyError):
    """Reader invitation problems (duplicate name, unknown reader)."""


class SessionError(StudyError):
    """An invalid submission (unknown assignment or task, answer off the scale ...)."""


class NotAuthorised(SessionError):
    """The reader asked for something outside their own assignments."""
