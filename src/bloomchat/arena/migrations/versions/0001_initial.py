"""Initial arena schema: prompts, replies, raters, assignments (with their votes).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("lang", sa.String(16), nullable=False, index=True),
        sa.Column("set_name", sa.String(100), nullable=False),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("turns_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "replies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("system", sa.String(100), nullable=False, index=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("origin", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("prompt_id", "system", name="uq_reply_prompt_system"),
    )
    op.create_table(
        "raters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("langs", sa.String(200), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("rater_id", sa.Integer, sa.ForeignKey("raters.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("system_lo", sa.String(100), nullable=False),
        sa.Column("system_hi", sa.String(100), nullable=False),
        sa.Column("left_is_lo", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("choice", sa.String(10), nullable=True),
        sa.Column("outcome", sa.String(10), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("voted_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("rater_id", "prompt_id", "system_lo", "system_hi", name="uq_rater_pair"),
    )
    op.create_index("ix_assignment_item", "assignments", ["prompt_id", "system_lo", "system_hi"])


def downgrade() -> None:
    op.drop_index("ix_assignment_item", table_name="assignments")
    op.drop_table("assignments")
    op.drop_table("raters")
    op.drop_table("replies")
    op.drop_table("prompts")
