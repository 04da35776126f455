"""batch segmentations: a report of source "batch" segments the cases of a split (or listed cases) on a worker

reports: ``case_ids`` (JSON, the requested cases) and ``queue`` (the worker queue of its task); segmentations:
``batch_id`` (the batch report) and ``case_id``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("case_ids", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("queue", sa.String(length=16), nullable=True))
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("case_id", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_segmentations_batch_id"), ["batch_id"], unique=False)
        batch_op.create_foreign_key("fk_segmentations_batch_id_reports", "reports", ["batch_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("segmentations", schema=None) as batch_op:
        batch_op.drop_constraint("fk_segmentations_batch_id_reports", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_segmentations_batch_id"))
        batch_op.drop_column("case_id")
        batch_op.drop_column("batch_id")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_column("queue")
        batch_op.drop_column("case_ids")
