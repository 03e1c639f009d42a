"""Wording shared by the web pages and the CLI, so they never disagree: user text shown
verbatim in Markdown (`plain_text`), reader progress (`progress`)."""
