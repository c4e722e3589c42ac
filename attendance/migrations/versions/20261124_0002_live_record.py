"""live record: check-ins, presence, quiz answers, notes review, results, points ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "points_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("ref", sa.String(length=120), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=True),
        sa.Column("venue_id", sa.Integer(), nullable=True),
        sa.Column("unit_id", sa.Integer(), nullable=True),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_points_ledger_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["study_sessions.id"],
            name=op.f("fk_points_ledger_session_id_study_sessions"),
        ),
        sa.ForeignKeyConstraint(
            ["unit_id"], ["org_units.id"], name=op.f("fk_points_ledger_unit_id_org_units")
        ),
        sa.ForeignKeyConstraint(
            ["venue_id"], ["venues.id"], name=op.f("fk_points_ledger_venue_id_venues")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_points_ledger")),
        sa.UniqueConstraint("ref", name=op.f("uq_points_ledger_ref")),
    )
    with op.batch_alter_table("points_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_points_ledger_member_id"), ["member_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_points_ledger_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_points_ledger_venue_id"), ["venue_id"], unique=False)

    op.create_table(
        "session_checkins",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("venue_id", sa.Integer(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_session_checkins_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["study_sessions.id"],
            name=op.f("fk_session_checkins_session_id_study_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["venue_id"], ["venues.id"], name=op.f("fk_session_checkins_venue_id_venues")
        ),
        sa.PrimaryKeyConstraint("session_id", "member_id", name=op.f("pk_session_checkins")),
    )
    op.create_table(
        "session_results",
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Integer(), nullable=False),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("first_join", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_leave", sa.DateTime(timezone=True), nullable=True),
        sa.Column("watched_s", sa.Double(), nullable=False),
        sa.Column("live_s", sa.Double(), nullable=False),
        sa.Column("share", sa.Double(), nullable=False),
        sa.Column("venue_id", sa.Integer(), nullable=True),
        sa.Column("presence_passed", sa.Integer(), nullable=False),
        sa.Column("presence_total", sa.Integer(), nullable=False),
        sa.Column("quiz_points", sa.Integer(), nullable=False),
        sa.Column("qualified", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.id"], name=op.f("fk_session_results_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["study_sessions.id"],
            name=op.f("fk_session_results_session_id_study_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["venue_id"], ["venues.id"], name=op.f("fk_session_results_venue_id_venues")
        ),
        sa.PrimaryKeyConstraint("session_id", "member_id", name=op.f("pk_session_results")),
    )
    with op.batch_alter_table("presence_checks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("quiz_answers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("answerer", sa.String(length=100), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("speed_bonus", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_quiz_answers_question_id_answerer"), ["question_id", "answerer"]
        )

    with op.batch_alter_table("quiz_questions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("study_notes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="submitted")
        )
        batch_op.add_column(sa.Column("reviewed_by", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("review_comment", sa.Text(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_study_notes_reviewed_by_users"), "users", ["reviewed_by"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("study_notes", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_study_notes_reviewed_by_users"), type_="foreignkey")
        batch_op.drop_column("review_comment")
        batch_op.drop_column("reviewed_at")
        batch_op.drop_column("reviewed_by")
        batch_op.drop_column("status")

    with op.batch_alter_table("quiz_questions", schema=None) as batch_op:
        batch_op.drop_column("created_at")
        batch_op.drop_column("closed_at")

    with op.batch_alter_table("quiz_answers", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_quiz_answers_question_id_answerer"), type_="unique")
        batch_op.drop_column("speed_bonus")
        batch_op.drop_column("answerer")

    with op.batch_alter_table("presence_checks", schema=None) as batch_op:
        batch_op.drop_column("announced_at")

    op.drop_table("session_results")
    op.drop_table("session_checkins")
    with op.batch_alter_table("points_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_points_ledger_venue_id"))
        batch_op.drop_index(batch_op.f("ix_points_ledger_session_id"))
        batch_op.drop_index(batch_op.f("ix_points_ledger_member_id"))

    op.drop_table("points_ledger")
