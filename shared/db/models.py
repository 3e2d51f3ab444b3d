"""Every ORM table. "Model" here means a table; neural nets are networks, weights files are checkpoints."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Identity, Index, Integer,
                        LargeBinary, SmallInteger, Text, UniqueConstraint, text)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from shared.db.base import Base, TimestampMixin

LISTING_STATUSES = ("pending", "processing", "ready", "failed", "deleted")
JOB_STATUSES = ("queued", "running", "done", "failed", "superseded")
JOB_KINDS = ("ingest", "delete", "reindex")
GENERATION_STATUSES = ("building", "active", "retired")
CHANGE_OPS = ("upsert", "delete", "activate")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Image(Base):
    """Image bytes, content-addressed. Postgres is the source of truth, so a listing's photo survives any worker."""

    __tablename__ = "images"
    sha256: Mapped[str] = mapped_column(Text, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    content_type: Mapped[str] = mapped_column(Text, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"), nullable=False)


class Listing(TimestampMixin, Base):
    """A seller's listing. `version` grows on every update; derived rows record the version they were made from."""

    __tablename__ = "listings"
    __table_args__ = (
        UniqueConstraint("seller_id", "external_id"),
        CheckConstraint(_in("status", LISTING_STATUSES), name="status"),
        Index("ix_listings_status", "status"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    seller_id: Mapped[str] = mapped_column(Text, nullable=False)
    external_id: Mapped[str] = mapped_column(Text, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    seller_category: Mapped[str | None] = mapped_column(Text)  # a category key the seller chose, if any
    image_url: Mapped[str | None] = mapped_column(Text)  # where the photo came from, if given by URL
    image_sha256: Mapped[str | None] = mapped_column(Text, ForeignKey("images.sha256"))
    status: Mapped[str] = mapped_column(Text, nullable=False, default="pending")
    status_message: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ListingCategory(Base):
    """The category the pipeline settled on, and where it came from: the seller's choice, the text, or the photo
    (`image`: the attribute network; `detector`; `detector+image`: both agreeing, see shared.pipeline)."""

    __tablename__ = "listing_categories"
    __table_args__ = (CheckConstraint("source IN ('text', 'image', 'seller', 'detector', 'detector+image')",
                                      name="source"),
                      Index("ix_listing_categories_conflict", "listing_id", postgresql_where=text("category_conflict")))
    listing_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    taxonomy_version: Mapped[str] = mapped_column(Text, primary_key=True)
    category_id: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    listing_version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The seller's category and the photo's main item disagree (paper Fig. 1: "bag" on an outfit photo); the
    # listing is still indexed under the seller's category. conflict = {"seller": {...}, "photo": {...}}.
    category_conflict: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=text("false"))
    conflict: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class ListingAttribute(Base):
    """One recognised attribute with its probability, per attribute-network version."""

    __tablename__ = "listing_attributes"
    listing_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    attribute_net_version: Mapped[str] = mapped_column(Text, primary_key=True)
    attribute_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    probability: Mapped[float] = mapped_column(Float, nullable=False)
    listing_version: Mapped[int] = mapped_column(Integer, nullable=False)


class Roi(Base):
    """Detected regions per detector version; `chosen` marks the one features were taken from."""

    __tablename__ = "rois"
    listing_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    detector_version: Mapped[str] = mapped_column(Text, primary_key=True)
    box_index: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    category_id: Mapped[int | None] = mapped_column(SmallInteger)
    x0: Mapped[float] = mapped_column(Float, nullable=False)
    y0: Mapped[float] = mapped_column(Float, nullable=False)
    x1: Mapped[float] = mapped_column(Float, nullable=False)
    y1: Mapped[float] = mapped_column(Float, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    chosen: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    fallback: Mapped[str] = mapped_column(Text, nullable=False, default="none")
    listing_version: Mapped[int] = mapped_column(Integer, nullable=False)


class IndexGeneration(Base):
    """One set of model versions whose postings the daemon can serve. Exactly one is active."""

    __tablename__ = "index_generations"
    __table_args__ = (
        CheckConstraint(_in("status", GENERATION_STATUSES), name="status"),
        # At most one active generation: the switch is one UPDATE of this pointer.
        Index("uq_index_generations_one_active", "status", unique=True, postgresql_where=text("status = 'active'")),
    )
    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    model_version: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="building")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"), nullable=False)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The version contract: {role: checkpoint version} it was built with, and the ranking parameters the daemon
    # serves it with ({"colour_weight", "n_bits", "colour_bins"}); NULL only for generations made before them.
    networks: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    golden: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # last golden-set figures (lookalike models)
    previous_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("index_generations.id"))  # rollback target


class Posting(Base):
    """What the daemon loads: per (generation, listing) the category, attribute ids, binary code and colour
    histogram, in exactly the packing `shared.codes` and `shared.index.colours` use."""

    __tablename__ = "postings"
    __table_args__ = (Index("ix_postings_generation_category", "generation_id", "category_id"),)
    generation_id: Mapped[int] = mapped_column(Integer, ForeignKey("index_generations.id", ondelete="CASCADE"),
                                               primary_key=True)
    listing_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    category_id: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    attribute_ids: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), nullable=False)
    code: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    colour: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    # 4-bit re-ranking vector (shared.vision.rerank): read by the API for a search's shortlist, never by the daemon.
    # NULL when the generation's features configuration has no re-ranker.
    rerank: Mapped[bytes | None] = mapped_column(LargeBinary)
    listing_version: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"), nullable=False)


class Change(Base):
    """The monotonic change sequence the daemon follows. Rows are appended in commit order (see
    `shared.db.queries.record_change`), so a reader that has seen seq N has seen every change before it."""

    __tablename__ = "changes"
    __table_args__ = (CheckConstraint(_in("op", CHANGE_OPS), name="op"),)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    generation_id: Mapped[int] = mapped_column(Integer, ForeignKey("index_generations.id", ondelete="CASCADE"),
                                               nullable=False)
    listing_id: Mapped[int | None] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"), nullable=False)


class AdminJob(Base):
    """A reindex request; its progress is counted from the jobs that point at it."""

    __tablename__ = "admin_jobs"
    __table_args__ = (CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="running")
    generation_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("index_generations.id"))
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(TimestampMixin, Base):
    """A unit of pipeline work in Postgres: our own attempt count and lease, since the broker may lose messages."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        Index("ix_jobs_status_lease", "status", "lease_until"),
        Index("ix_jobs_listing", "listing_id"),
        Index("ix_jobs_admin_job", "admin_job_id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    listing_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("listings.id", ondelete="CASCADE"), nullable=False)
    listing_version: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    generation_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("index_generations.id"))
    admin_job_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("admin_jobs.id"))
    status: Mapped[str] = mapped_column(Text, nullable=False, default="queued")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
