"""The knowledge base's document registry moves into ``kb_documents``: its remaining columns, a version order,
and a tenant-name lookup the application role may call.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Until now the registry lived in its own SQLite file under ``kb.data_dir``; `rag.registry.SqlDocumentRegistry`
now keeps it here, so the gateway, the workers and the CLI share one registry with the rest of the platform
(and, on Postgres, its row-level security: the policy on ``kb_documents`` comes from 0001).

* ``seq``: a monotonically increasing number per registration (and per retry of a failed one), which orders
  the versions of a file where the old registry used SQLite's rowid. A sequence on Postgres (the application
  role gets USAGE on it); on SQLite the registry writes ``max(seq) + 1`` inside its write transaction, and rows
  already there are numbered by their rowid.
* ``tenant_id_of(name)`` (Postgres only): the knowledge base knows tenants by name, and with FORCEd row-level
  security the application role sees no ``tenants`` row until ``app.tenant_id`` is set, which is what it wants
  to find out. This SECURITY DEFINER function runs as the owner (whose ``platform_admin`` policy sees every
  tenant while no tenant is set) and returns only the id; it is executable by the owner and the application
  role, not by PUBLIC, and pins its search_path so a temporary table cannot stand in for ``tenants``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from voiceai.db.migrate import DEFAULT_APP_ROLE, check_role_name

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQUENCE = "kb_documents_seq_seq"
# (column, server default for the rows already there): every one NOT NULL except indexed_at.
_COLUMNS = (
    (sa.Column("priority", sa.String(length=16), nullable=False, server_default="default")),
    (sa.Column("task_id", sa.String(length=255), nullable=False, server_default="")),
    (sa.Column("title", sa.Text(), nullable=False, server_default="")),
    (sa.Column("format", sa.String(length=16), nullable=False, server_default="")),
    (sa.Column("language", sa.String(length=8), nullable=False, server_default="")),
    (sa.Column("pages", sa.Integer(), nullable=False, server_default="0")),
    (sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")),
    (sa.Column("indexed_at", sa.DateTime(timezone=True), nullable=True)),
)


def upgrade() -> None:
    postgres = _is_postgres()
    if postgres:
        op.execute(f"CREATE SEQUENCE {SEQUENCE}")
        seq = sa.Column("seq", sa.BigInteger(), nullable=False, server_default=sa.text(f"nextval('{SEQUENCE}')"))
    else:
        seq = sa.Column("seq", sa.Integer(), nullable=False, server_default="0")
    for column in (*_COLUMNS, seq):
        op.add_column("kb_documents", column)
    op.create_index("kb_documents_tenant_filename", "kb_documents", ["tenant_id", "filename"], unique=False)
    if not postgres:
        op.execute("UPDATE kb_documents SET seq = rowid")
        return
    role = _app_role()
    q = f'"{role}"'
    op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY kb_documents.seq")
    op.execute(f"GRANT USAGE ON SEQUENCE {SEQUENCE} TO {q}")
    # The schema is spliced in with quote_ident (no '%' for a driver to mistake for a parameter).
    op.execute("""
        DO $$
        BEGIN
            EXECUTE 'CREATE FUNCTION tenant_id_of(tenant_name text) RETURNS text LANGUAGE sql STABLE '
                    'SECURITY DEFINER SET search_path = ' || quote_ident(current_schema()) || ', pg_temp '
                    'AS $f$ SELECT id FROM tenants WHERE name = tenant_name $f$';
        END
        $$""")
    op.execute("REVOKE ALL ON FUNCTION tenant_id_of(text) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION tenant_id_of(text) TO {q}")


def downgrade() -> None:
    postgres = _is_postgres()
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS tenant_id_of(text)")
    op.drop_index("kb_documents_tenant_filename", table_name="kb_documents")
    with op.batch_alter_table("kb_documents") as batch:
        for name in ("seq", *(c.name for c in _COLUMNS)):
            batch.drop_column(name)
    if postgres:
        op.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE}")  # normally gone with its column (OWNED BY)


def _is_postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _app_role() -> str:
    """As in 0001: ``config.attributes["app_role"]``, else ``-x app_role=...``, else the default."""
    role = (context.config.attributes.get("app_role")
            or context.get_x_argument(as_dictionary=True).get("app_role")
            or DEFAULT_APP_ROLE)
    return check_role_name(role)
