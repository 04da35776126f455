"""model post-processing: what a model does to each predicted mask (its manifest's ``postprocess``)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 04:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("postprocess", sa.String(length=32), server_default="none", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("postprocess")
