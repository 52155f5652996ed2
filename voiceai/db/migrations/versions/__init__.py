"""Revisions, oldest first. A package only so that the files are installed with voiceai; alembic skips this file."""
