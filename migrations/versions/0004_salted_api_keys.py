"""salted api keys: a per-key salt beside an HMAC-SHA256 digest

Existing rows keep ``salt`` NULL and their bare SHA-256 digest: they stay verifiable as legacy keys (a key cannot
be rehashed without the key itself); new keys are always salted. After a downgrade, salted rows match no key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("salt")
