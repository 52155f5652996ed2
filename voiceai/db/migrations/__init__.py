"""Alembic migrations of the platform database (run through voiceai.db.migrate, not an alembic.ini)."""
