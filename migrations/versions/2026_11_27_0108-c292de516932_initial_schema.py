"""initial schema: listings, images, derived rows, postings, change sequence, jobs

Revision ID: c292de516932
Revises: 
Create Date: 2026-11-27 01:08:17.656468
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = 'c292de516932'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('images',
    sa.Column('sha256', sa.Text(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('content_type', sa.Text(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_images'))
    )
    op.create_table('index_generations',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('model_version', sa.Text(), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('building', 'active', 'retired')", name=op.f('ck_index_generations_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_index_generations')),
    sa.UniqueConstraint('model_version', name=op.f('uq_index_generations_model_version'))
    )
    op.create_index('uq_index_generations_one_active', 'index_generations', ['status'], unique=True, postgresql_where=sa.text("status = 'active'"))
    op.create_table('admin_jobs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('generation_id', sa.Integer(), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f('ck_admin_jobs_status')),
    sa.ForeignKeyConstraint(['generation_id'], ['index_generations.id'], name=op.f('fk_admin_jobs_generation_id_index_generations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_jobs'))
    )
    op.create_table('changes',
    sa.Column('seq', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('generation_id', sa.Integer(), nullable=False),
    sa.Column('listing_id', sa.BigInteger(), nullable=True),
    sa.Column('op', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("op IN ('upsert', 'delete', 'activate')", name=op.f('ck_changes_op')),
    sa.ForeignKeyConstraint(['generation_id'], ['index_generations.id'], name=op.f('fk_changes_generation_id_index_generations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_changes'))
    )
    op.create_table('listings',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('seller_id', sa.Text(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('seller_category', sa.Text(), nullable=True),
    sa.Column('image_url', sa.Text(), nullable=True),
    sa.Column('image_sha256', sa.Text(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('status_message', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'processing', 'ready', 'failed', 'deleted')", name=op.f('ck_listings_status')),
    sa.ForeignKeyConstraint(['image_sha256'], ['images.sha256'], name=op.f('fk_listings_image_sha256_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_listings')),
    sa.UniqueConstraint('seller_id', 'external_id', name=op.f('uq_listings_seller_id_external_id'))
    )
    op.create_index('ix_listings_status', 'listings', ['status'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('listing_id', sa.BigInteger(), nullable=False),
    sa.Column('listing_version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('generation_id', sa.Integer(), nullable=True),
    sa.Column('admin_job_id', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('ingest', 'delete', 'reindex')", name=op.f('ck_jobs_kind')),
    sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed', 'superseded')", name=op.f('ck_jobs_status')),
    sa.ForeignKeyConstraint(['admin_job_id'], ['admin_jobs.id'], name=op.f('fk_jobs_admin_job_id_admin_jobs')),
    sa.ForeignKeyConstraint(['generation_id'], ['index_generations.id'], name=op.f('fk_jobs_generation_id_index_generations')),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], name=op.f('fk_jobs_listing_id_listings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_admin_job', 'jobs', ['admin_job_id'], unique=False)
    op.create_index('ix_jobs_listing', 'jobs', ['listing_id'], unique=False)
    op.create_index('ix_jobs_status_lease', 'jobs', ['status', 'lease_until'], unique=False)
    op.create_table('listing_attributes',
    sa.Column('listing_id', sa.BigInteger(), nullable=False),
    sa.Column('attribute_net_version', sa.Text(), nullable=False),
    sa.Column('attribute_id', sa.SmallInteger(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('listing_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], name=op.f('fk_listing_attributes_listing_id_listings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_id', 'attribute_net_version', 'attribute_id', name=op.f('pk_listing_attributes'))
    )
    op.create_table('listing_categories',
    sa.Column('listing_id', sa.BigInteger(), nullable=False),
    sa.Column('taxonomy_version', sa.Text(), nullable=False),
    sa.Column('category_id', sa.SmallInteger(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('listing_version', sa.Integer(), nullable=False),
    sa.CheckConstraint("source IN ('text', 'image', 'seller')", name=op.f('ck_listing_categories_source')),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], name=op.f('fk_listing_categories_listing_id_listings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_id', 'taxonomy_version', name=op.f('pk_listing_categories'))
    )
    op.create_table('postings',
    sa.Column('generation_id', sa.Integer(), nullable=False),
    sa.Column('listing_id', sa.BigInteger(), nullable=False),
    sa.Column('category_id', sa.SmallInteger(), nullable=False),
    sa.Column('attribute_ids', postgresql.ARRAY(sa.SmallInteger()), nullable=False),
    sa.Column('code', sa.LargeBinary(), nullable=False),
    sa.Column('colour', sa.LargeBinary(), nullable=False),
    sa.Column('listing_version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['generation_id'], ['index_generations.id'], name=op.f('fk_postings_generation_id_index_generations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], name=op.f('fk_postings_listing_id_listings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('generation_id', 'listing_id', name=op.f('pk_postings'))
    )
    op.create_index('ix_postings_generation_category', 'postings', ['generation_id', 'category_id'], unique=False)
    op.create_table('rois',
    sa.Column('listing_id', sa.BigInteger(), nullable=False),
    sa.Column('detector_version', sa.Text(), nullable=False),
    sa.Column('box_index', sa.SmallInteger(), nullable=False),
    sa.Column('category_id', sa.SmallInteger(), nullable=True),
    sa.Column('x0', sa.Float(), nullable=False),
    sa.Column('y0', sa.Float(), nullable=False),
    sa.Column('x1', sa.Float(), nullable=False),
    sa.Column('y1', sa.Float(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('chosen', sa.Boolean(), nullable=False),
    sa.Column('fallback', sa.Text(), nullable=False),
    sa.Column('listing_version', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['listing_id'], ['listings.id'], name=op.f('fk_rois_listing_id_listings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_id', 'detector_version', 'box_index', name=op.f('pk_rois'))
    )


def downgrade() -> None:
    op.drop_table('rois')
    op.drop_index('ix_postings_generation_category', table_name='postings')
    op.drop_table('postings')
    op.drop_table('listing_categories')
    op.drop_table('listing_attributes')
    op.drop_index('ix_jobs_status_lease', table_name='jobs')
    op.drop_index('ix_jobs_listing', table_name='jobs')
    op.drop_index('ix_jobs_admin_job', table_name='jobs')
    op.drop_table('jobs')
    op.drop_index('ix_listings_status', table_name='listings')
    op.drop_table('listings')
    op.drop_table('changes')
    op.drop_table('admin_jobs')
    op.drop_index('uq_index_generations_one_active', table_name='index_generations', postgresql_where=sa.text("status = 'active'"))
    op.drop_table('index_generations')
    op.drop_table('images')
