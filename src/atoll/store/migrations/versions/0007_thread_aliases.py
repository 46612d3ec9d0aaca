"""Thread aliases: an AG-UI client's threadId for an Atoll thread

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import atoll.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTC = atoll.store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "thread_aliases",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_thread_aliases_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_thread_aliases")),
        sa.UniqueConstraint("user_id", "source", "external_id", name="uq_thread_aliases_external"),
    )
    op.create_index(
        op.f("ix_thread_aliases_thread_id"), "thread_aliases", ["thread_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_thread_aliases_thread_id"), table_name="thread_aliases")
    op.drop_table("thread_aliases")
