"""Thread deletion as an ending: a thread being deleted is marked first, so no run can be
stored on it while its runs end

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import atoll.store.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UTC = atoll.store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("threads") as batch:
        batch.add_column(sa.Column("deleted_at", UTC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("threads") as batch:
        batch.drop_column("deleted_at")
