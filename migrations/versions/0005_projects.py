"""projects: every dataset, job, model, report and segmentation belongs to a project; keys have one, or are admin

Existing rows go to the ``default`` project. Existing bootstrap keys (``MONA_API_KEY``) become admin keys, as they
saw everything before; other existing keys stay in ``default``, which holds every existing row, so nothing they
could see disappears. The downgrade drops the columns (tenancy is lost, rows are kept).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_keys", "datasets", "jobs", "models", "segmentations", "reports")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("project", sa.String(length=64), server_default="default", nullable=False))
            batch_op.create_index(batch_op.f(f"ix_{table}_project"), ["project"], unique=False)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.execute(sa.text("UPDATE api_keys SET admin = :yes WHERE name = 'bootstrap'").bindparams(yes=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("admin")
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_project"))
            batch_op.drop_column("project")
