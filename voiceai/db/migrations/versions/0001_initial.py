"""Initial schema: every table, the application role, row-level security, an append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Postgres runs with two roles. The *owner* (the role of ``db.admin_url``, which runs this migration)
owns the tables; the *application role* (``app_role``, default voiceai_app; the user of ``db.url``) is
created here if missing (LOGIN, NOSUPERUSER, NOBYPASSRLS; no password: operators set one) and gets only
the rights the request path needs. Roles are cluster-wide and may serve other databases, so the
downgrade leaves them in place; it revokes what this revision granted and drops everything else.

Row-level security, on every tenant-owned table and on ``tenants`` itself, ENABLEd and FORCEd:

* ``tenant_isolation`` (every role): a row is visible, insertable and updatable only when its tenant
  (``tenants.id``, elsewhere ``tenant_id``) equals ``current_setting('app.tenant_id', true)``, which
  `Database.tenant_session` sets per transaction. No tenant set: no rows. Rows with a NULL tenant
  (platform-level audit entries) never match, so the application role can neither see nor write them.
* ``platform_admin`` (the owner only): every row, but only while no tenant is set: this is what
  `Database.admin_session` on the owner's URL relies on (tenant creation, login by email, retention).

Why FORCE plus an explicit owner policy rather than leaving the owner to bypass RLS by ownership: with
FORCE, the owner in a tenant session is scoped exactly like the application role, so a deployment that
runs everything as one role (``admin_url`` empty) still gets database-enforced isolation in every
tenant session; and who may see every tenant is written in ``pg_policies``, not implied by ownership.
(A superuser ignores RLS altogether: the owner should not be one in production.) Foreign-key checks
and ON DELETE CASCADE are not subject to RLS, so deleting a tenant still removes all its rows.

The application role cannot TRUNCATE anything (TRUNCATE ignores RLS), gets SELECT and UPDATE of
``display_name`` only on ``tenants`` (creating, disabling or deleting a tenant is the owner's job; a
tenant must not re-enable itself), and SELECT, INSERT only on ``audit_logs``.

``audit_logs`` is append-only on both engines, for every role including the owner: on Postgres a
statement trigger refuses UPDATE, DELETE and TRUNCATE (a statement trigger fires even when no row
matches, so an attempt never passes silently); on SQLite BEFORE UPDATE / BEFORE DELETE triggers
abort. Pruning audit rows would take a deliberate schema change by the owner (disable the trigger).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from voiceai.db.migrate import DEFAULT_APP_ROLE, check_role_name

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen as of this revision (models.TENANT_TABLES may grow; a new table gets its policy in its own revision).
TENANT_TABLES = ("users", "api_keys", "refresh_tokens", "calls", "transcripts", "actions", "kb_documents", "configs",
                 "audit_logs")
APP_WRITABLE = tuple(t for t in TENANT_TABLES if t != "audit_logs")
CURRENT_TENANT = "current_setting('app.tenant_id', true)"
APPEND_ONLY = "audit_logs is append-only"


def upgrade() -> None:
    _create_tables()
    if _is_postgres():
        _postgres_upgrade(_app_role())
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_logs_no_{event.lower()} BEFORE {event} ON audit_logs "
                       f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")


def downgrade() -> None:
    if _is_postgres():
        _postgres_downgrade(_app_role())
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS audit_logs_no_{event}")
    for table in ("transcripts", "refresh_tokens", "actions", "users", "kb_documents", "configs", "calls", "api_keys",
                  "tenants", "audit_logs"):
        op.drop_table(table)


def _is_postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"  # works offline (--sql) too, unlike op.get_bind()


def _app_role() -> str:
    """``config.attributes["app_role"]`` (voiceai.db.migrate), else ``-x app_role=...``, else the default."""
    role = (context.config.attributes.get("app_role")
            or context.get_x_argument(as_dictionary=True).get("app_role")
            or DEFAULT_APP_ROLE)
    return check_role_name(role)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f(f"{table}_tenant_id_fkey"),
                                   ondelete="CASCADE")


def _postgres_upgrade(role: str) -> None:
    # `role` matched check_role_name (lower-case letters, digits, underscores), so it is safe inside both
    # a quoted identifier and a string literal. The SQL avoids '%' and ':' so that no driver mistakes
    # them for parameters, and sends one statement per execute (asyncpg prepares each one).
    q = f'"{role}"'
    op.execute(f"""
        DO $$
        BEGIN
            IF current_user = '{role}' THEN
                RAISE EXCEPTION 'the application role {role} must not be the role that owns the tables';
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {q} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
            ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}' AND (rolsuper OR rolbypassrls)) THEN
                RAISE EXCEPTION 'role {role} bypasses row-level security; the application role must not';
            END IF;
            EXECUTE 'GRANT CONNECT ON DATABASE ' || quote_ident(current_database()) || ' TO {q}';
            EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO {q}';
            EXECUTE 'GRANT USAGE ON SEQUENCE ' || pg_get_serial_sequence('audit_logs', 'id') || ' TO {q}';
        END
        $$""")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(APP_WRITABLE)} TO {q}")
    op.execute(f"GRANT SELECT, UPDATE (display_name) ON tenants TO {q}")
    op.execute(f"GRANT SELECT, INSERT ON audit_logs TO {q}")
    op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_logs FROM PUBLIC, {q}")

    for table, column in (("tenants", "id"), *((t, "tenant_id") for t in TENANT_TABLES)):
        mine = f"{column} = {CURRENT_TENANT}"
        no_tenant = f"coalesce({CURRENT_TENANT}, '') = ''"
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_isolation ON {table} USING ({mine}) WITH CHECK ({mine})")
        op.execute(f"CREATE POLICY platform_admin ON {table} TO CURRENT_USER "
                   f"USING ({no_tenant}) WITH CHECK ({no_tenant})")

    op.execute(f"""
        CREATE FUNCTION audit_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION USING MESSAGE = '{APPEND_ONLY}: ' || TG_OP || ' refused';
        END
        $$""")
    op.execute("CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_logs "
               "FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_append_only()")


def _postgres_downgrade(role: str) -> None:
    q = f'"{role}"'
    op.execute("DROP TRIGGER IF EXISTS audit_logs_append_only ON audit_logs")
    op.execute("DROP FUNCTION IF EXISTS audit_logs_append_only()")
    for table in ("tenants", *TENANT_TABLES):
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"DROP POLICY IF EXISTS platform_admin ON {table}")
    # Table grants go with the tables; these two outlive them.
    op.execute(f"""
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                EXECUTE 'REVOKE CONNECT ON DATABASE ' || quote_ident(current_database()) || ' FROM {q}';
                EXECUTE 'REVOKE USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' FROM {q}';
            END IF;
        END
        $$""")


def _create_tables() -> None:
    op.create_table("audit_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=300), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("audit_logs_pkey"))
    )
    op.create_index("audit_logs_tenant_at", "audit_logs", ["tenant_id", "at"], unique=False)
    op.create_table("tenants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("tenants_pkey")),
        sa.UniqueConstraint("name", name=op.f("tenants_name_key"))
    )
    op.create_table("api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        _tenant_fk("api_keys"),
        sa.PrimaryKeyConstraint("id", name=op.f("api_keys_pkey")),
        sa.UniqueConstraint("key_hash", name=op.f("api_keys_key_hash_key"))
    )
    op.create_index(op.f("ix_api_keys_prefix"), "api_keys", ["prefix"], unique=False)
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)
    op.create_table("calls",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("caller_id", sa.String(length=200), nullable=False),
        sa.Column("caller_hash", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_reason", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        _tenant_fk("calls"),
        sa.PrimaryKeyConstraint("id", name=op.f("calls_pkey"))
    )
    op.create_index(op.f("ix_calls_caller_hash"), "calls", ["caller_hash"], unique=False)
    op.create_index(op.f("ix_calls_started_at"), "calls", ["started_at"], unique=False)
    op.create_index(op.f("ix_calls_tenant_id"), "calls", ["tenant_id"], unique=False)
    op.create_table("configs",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("store_full_transcripts", sa.Boolean(), nullable=False),
        sa.Column("languages", sa.JSON(), nullable=False),
        sa.Column("voices", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("working_hours", sa.JSON(), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _tenant_fk("configs"),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("configs_pkey"))
    )
    op.create_table("kb_documents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_reason", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _tenant_fk("kb_documents"),
        sa.PrimaryKeyConstraint("id", name=op.f("kb_documents_pkey")),
        sa.UniqueConstraint("tenant_id", "content_hash", name="kb_documents_content_key")
    )
    op.create_index(op.f("ix_kb_documents_tenant_id"), "kb_documents", ["tenant_id"], unique=False)
    op.create_table("users",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        _tenant_fk("users"),
        sa.PrimaryKeyConstraint("id", name=op.f("users_pkey")),
        sa.UniqueConstraint("email", name="users_email_key")
    )
    op.create_index(op.f("ix_users_tenant_id"), "users", ["tenant_id"], unique=False)
    op.create_table("actions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("call_id", sa.String(length=32), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name=op.f("actions_call_id_fkey"), ondelete="CASCADE"),
        _tenant_fk("actions"),
        sa.PrimaryKeyConstraint("id", name=op.f("actions_pkey"))
    )
    op.create_index(op.f("ix_actions_call_id"), "actions", ["call_id"], unique=False)
    op.create_index(op.f("ix_actions_tenant_id"), "actions", ["tenant_id"], unique=False)
    op.create_table("refresh_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("family_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        _tenant_fk("refresh_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("refresh_tokens_user_id_fkey"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("refresh_tokens_pkey")),
        sa.UniqueConstraint("token_hash", name=op.f("refresh_tokens_token_hash_key"))
    )
    op.create_index(op.f("ix_refresh_tokens_family_id"), "refresh_tokens", ["family_id"], unique=False)
    op.create_index(op.f("ix_refresh_tokens_tenant_id"), "refresh_tokens", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_refresh_tokens_user_id"), "refresh_tokens", ["user_id"], unique=False)
    op.create_table("transcripts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("call_id", sa.String(length=32), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("speaker", sa.String(length=8), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("redacted", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], name=op.f("transcripts_call_id_fkey"), ondelete="CASCADE"),
        _tenant_fk("transcripts"),
        sa.PrimaryKeyConstraint("id", name=op.f("transcripts_pkey")),
        sa.UniqueConstraint("call_id", "turn", "speaker", name="transcripts_turn_key")
    )
    op.create_index(op.f("ix_transcripts_call_id"), "transcripts", ["call_id"], unique=False)
    op.create_index(op.f("ix_transcripts_created_at"), "transcripts", ["created_at"], unique=False)
    op.create_index(op.f("ix_transcripts_tenant_id"), "transcripts", ["tenant_id"], unique=False)
