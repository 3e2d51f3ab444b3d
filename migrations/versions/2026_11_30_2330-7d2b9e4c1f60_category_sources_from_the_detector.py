"""listing category sources: the photo's category may come from the detector, or the detector and the attribute
network agreeing (shop-the-look rule), besides text, image and seller

Revision ID: 7d2b9e4c1f60
Revises: 5e1f0c7a9b21
Create Date: 2026-11-30 23:30:00
"""
from __future__ import annotations

from alembic import op

revision = '7d2b9e4c1f60'
down_revision = '5e1f0c7a9b21'
branch_labels = None
depends_on = None

NEW = "source IN ('text', 'image', 'seller', 'detector', 'detector+image')"
OLD = "source IN ('text', 'image', 'seller')"


def upgrade() -> None:
    op.drop_constraint(op.f('ck_listing_categories_source'), 'listing_categories', type_='check')
    op.create_check_constraint(op.f('ck_listing_categories_source'), 'listing_categories', NEW)


def downgrade() -> None:
    # Rows from the detector become 'image' (the photo) so the narrower rule holds again.
    op.execute("UPDATE listing_categories SET source = 'image' WHERE source IN ('detector', 'detector+image')")
    op.drop_constraint(op.f('ck_listing_categories_source'), 'listing_categories', type_='check')
    op.create_check_constraint(op.f('ck_listing_categories_source'), 'listing_categories', OLD)
