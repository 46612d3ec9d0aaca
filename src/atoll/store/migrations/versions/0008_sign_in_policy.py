"""Sign-in policy: providers bound to organisations, how each session signed in, and the
last refresh-token rotation of each session (for the reuse interval)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import atoll.store.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UTC = atoll.store.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "org_providers",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_org_providers_org_id_orgs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("org_id", "provider", name=op.f("pk_org_providers")),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("previous_refresh_jti", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("rotated_at", UTC, nullable=True))
        batch.add_column(sa.Column("access_jti", sa.String(length=64), nullable=True))
    with op.batch_alter_table("login_codes") as batch:
        batch.add_column(sa.Column("provider", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("login_codes") as batch:
        batch.drop_column("provider")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("access_jti")
        batch.drop_column("rotated_at")
        batch.drop_column("previous_refresh_jti")
        batch.drop_column("provider")
    op.drop_table("org_providers")
