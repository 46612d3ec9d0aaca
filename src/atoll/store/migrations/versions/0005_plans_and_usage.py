"""Plans: monthly usage counters; organisations: removed members

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import atoll.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC = atoll.store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_counters",
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner_id", "month", name=op.f("pk_usage_counters")),
    )
    with op.batch_alter_table("org_members") as batch:
        batch.add_column(sa.Column("removed_at", UTC, nullable=True))
        batch.add_column(sa.Column("removed_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("org_members") as batch:
        batch.drop_column("removed_by")
        batch.drop_column("removed_at")
    op.drop_table("usage_counters")
