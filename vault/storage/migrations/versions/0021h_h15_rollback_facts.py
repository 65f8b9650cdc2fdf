"""one-way facts: audit_events.entity and its partial index (vault.audit.facts)

Revision ID: h15_rollback_0021
Revises: h15macs1
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from vault.audit.facts import FACT_ACTIONS, entity_of

revision = "h15_rollback_0021"
down_revision = "h15macs1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entity", sa.String(length=160), nullable=True))
    op.create_index("ix_audit_events_entity", "audit_events", ["entity", "seq"], unique=False,
                    sqlite_where=sa.text("entity IS NOT NULL"), postgresql_where=sa.text("entity IS NOT NULL"))
    # Facts recorded before the upgrade are named too, so decisions see them. Their events keep
    # their scheme-2 MAC, which does not cover `entity` (README "Insider with the database" says
    # what that leaves open; `tokenvault integrity check` still cross-checks them).
    bind = op.get_bind()
    events = sa.table("audit_events", sa.column("seq"), sa.column("action"), sa.column("outcome"),
                      sa.column("actor"), sa.column("subject_id"), sa.column("detail"), sa.column("entity"))
    rows = bind.execute(sa.select(events.c.seq, events.c.action, events.c.outcome, events.c.actor,
                                  events.c.subject_id, events.c.detail)
                        .where(events.c.action.in_(FACT_ACTIONS))).all()
    named = [{"s": seq, "e": entity} for seq, action, outcome, actor, subject_id, detail in rows
             if (entity := entity_of(action, outcome, actor, subject_id, detail)) is not None]
    if named:
        bind.execute(sa.update(events).where(events.c.seq == sa.bindparam("s")).values(entity=sa.bindparam("e")),
                     named)


def downgrade() -> None:
    op.drop_index("ix_audit_events_entity", table_name="audit_events")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("entity")
