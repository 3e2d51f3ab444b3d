"""generation contract (network versions, ranking params, golden figures, previous) and category conflicts

Revision ID: 5e1f0c7a9b21
Revises: c292de516932
Create Date: 2026-11-30 22:40:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '5e1f0c7a9b21'
down_revision = 'c292de516932'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('index_generations', sa.Column('networks', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('index_generations', sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('index_generations', sa.Column('golden', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('index_generations', sa.Column('previous_id', sa.Integer(), nullable=True))
    op.create_foreign_key(op.f('fk_index_generations_previous_id_index_generations'), 'index_generations',
                          'index_generations', ['previous_id'], ['id'])
    op.add_column('listing_categories', sa.Column('category_conflict', sa.Boolean(), server_default=sa.false(),
                                                  nullable=False))
    op.add_column('listing_categories', sa.Column('conflict', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_index('ix_listing_categories_conflict', 'listing_categories', ['listing_id'],
                    postgresql_where=sa.text('category_conflict'))


def downgrade() -> None:
    op.drop_index('ix_listing_categories_conflict', table_name='listing_categories',
                  postgresql_where=sa.text('category_conflict'))
    op.drop_column('listing_categories', 'conflict')
    op.drop_column('listing_categories', 'category_conflict')
    op.drop_constraint(op.f('fk_index_generations_previous_id_index_generations'), 'index_generations',
                       type_='foreignkey')
    op.drop_column('index_generations', 'previous_id')
    op.drop_column('index_generations', 'golden')
    op.drop_column('index_generations', 'params')
    op.drop_column('index_generations', 'networks')
