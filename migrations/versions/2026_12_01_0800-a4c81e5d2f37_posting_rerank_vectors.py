"""postings.rerank: the 4-bit re-ranking vector the API reads for a search's shortlist (issue 12)

Revision ID: a4c81e5d2f37
Revises: 7d2b9e4c1f60
Create Date: 2026-12-01 08:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'a4c81e5d2f37'
down_revision = '7d2b9e4c1f60'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: generations built before the re-ranker keep their rows and are served without re-ranking.
    op.add_column('postings', sa.Column('rerank', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column('postings', 'rerank')
