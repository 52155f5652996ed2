"""Who may do what: the permissions, and the one table that grants them to roles.

Routes never test a role by name; they ask for a permission (``require(Permission.KB_WRITE)``), and this
table is the only place that maps roles to permissions. Changing who may do something is a one-line edit
here, reviewed together with the table in docs/SECURITY.md (a test keeps the two identical).

The least privilege a contact centre needs, as we read it:

* admin: runs the tenant (users, API keys, policies, erasure requests); everything.
* supervisor: leads the agents: watches calls and transcripts, curates the knowledge base, places test
  calls, takes over calls; reads (not changes) the tenant's configuration.
* agent: a human who takes over calls from the bot: sees calls and transcripts, ends and annotates calls,
  searches the knowledge base while talking to a customer.
* viewer: dashboards: call metadata and the list of knowledge-base documents; no transcripts (they hold
  customers' words) and nothing that writes.
* caller (a call token, not a role anyone is given): joins one call, nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from voiceai.db.models import ROLES


class Permission(StrEnum):
    """One thing a principal may do; the value is what docs, logs and audit rows show."""

    CALLS_READ = "calls.read"  # list calls, read a call's metadata and timings
    CALLS_WRITE = "calls.write"  # create a call (mint a caller's call token), end or annotate a call
    CALLS_JOIN = "calls.join"  # stream audio into a call as its caller
    TRANSCRIPTS_READ = "transcripts.read"  # what was said, turn by turn
    KB_READ = "kb.read"  # list knowledge-base documents and their ingestion status
    KB_WRITE = "kb.write"  # upload and delete documents
    KB_SEARCH = "kb.search"  # search passages and ask grounded questions
    CONFIG_READ = "config.read"  # the tenant's policies: languages, voices, retention, hours
    CONFIG_WRITE = "config.write"
    USERS_MANAGE = "users.manage"  # invite, change roles, disable
    APIKEYS_MANAGE = "apikeys.manage"  # create, list, revoke
    AUDIT_READ = "audit.read"
    GDPR_ERASE = "gdpr.erase"  # erase a data subject's calls and transcripts
    HANDOFF_TAKE = "handoff.take"  # take over a call from the bot


P = Permission
CALLER_ROLE = "caller"

ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = MappingProxyType({
    "admin": frozenset(Permission),
    "supervisor": frozenset({P.CALLS_READ, P.CALLS_WRITE, P.CALLS_JOIN, P.TRANSCRIPTS_READ, P.KB_READ, P.KB_WRITE,
                             P.KB_SEARCH, P.CONFIG_READ, P.HANDOFF_TAKE}),
    "agent": frozenset({P.CALLS_READ, P.CALLS_WRITE, P.TRANSCRIPTS_READ, P.KB_SEARCH, P.HANDOFF_TAKE}),
    "viewer": frozenset({P.CALLS_READ, P.KB_READ}),
    CALLER_ROLE: frozenset({P.CALLS_JOIN}),
})
if set(ROLE_PERMISSIONS) != {*ROLES, CALLER_ROLE}:  # a role added to the database needs a row here first
    raise RuntimeError(f"ROLE_PERMISSIONS covers {sorted(ROLE_PERMISSIONS)}; voiceai.db.models.ROLES is {ROLES}")

WRITE_PERMISSIONS = frozenset({P.CALLS_WRITE, P.KB_WRITE, P.CONFIG_WRITE, P.USERS_MANAGE, P.APIKEYS_MANAGE,
                               P.GDPR_ERASE, P.HANDOFF_TAKE})


def permissions_of(role: str) -> frozenset[Permission]:
    """What ``role`` may do; an unknown role may do nothing (fail closed)."""
    return ROLE_PERMISSIONS.get(role, frozenset())


def role_allows(role: str, permission: Permission) -> bool:
    return permission in permissions_of(role)


def permission_table_markdown() -> str:
    """The role x permission table as Markdown, exactly as docs/SECURITY.md carries it."""
    roles = [*ROLES, CALLER_ROLE]
    header = "| permission | " + " | ".join(r if r != CALLER_ROLE else "call token" for r in roles) + " |"
    rule = "|---|" + "|".join(":-:" for _ in roles) + "|"
    rows = [f"| `{p.value}` | " + " | ".join("yes" if role_allows(r, p) else "-" for r in roles) + " |"
            for p in Permission]
    return "\n".join([header, rule, *rows])
