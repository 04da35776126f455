"""console viewer: a segmentation made in the web console keeps its scan (and label) for the slice viewer

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 19:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("viewer_image_key", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("viewer_label_key", sa.String(length=120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.drop_column("viewer_label_key")
        batch_op.drop_column("viewer_image_key")
