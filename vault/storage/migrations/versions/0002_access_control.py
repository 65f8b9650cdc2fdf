"""access control: operators, sessions, used TOTP steps, approvals, client key rotation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 17:10:00.000000
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
import vault.storage.schema


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('operators',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=40), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('totp_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('totp_key_id', sa.String(length=40), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('locked_until', vault.storage.schema.UTCDateTime(), nullable=True),
    sa.Column('created_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.Column('disabled_at', vault.storage.schema.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['totp_key_id'], ['data_keys.id'], name=op.f('fk_operators_totp_key_id_data_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_operators')),
    sa.UniqueConstraint('username', name=op.f('uq_operators_username'))
    )
    op.create_table('operator_sessions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('operator_id', sa.String(length=40), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.Column('expires_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', vault.storage.schema.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['operator_id'], ['operators.id'],
                            name=op.f('fk_operator_sessions_operator_id_operators')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_operator_sessions_token_hash'))
    )
    op.create_index(op.f('ix_operator_sessions_operator_id'), 'operator_sessions', ['operator_id'], unique=False)
    op.create_table('totp_uses',
    sa.Column('operator_id', sa.String(length=40), nullable=False),
    sa.Column('step', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('used_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['operator_id'], ['operators.id'], name=op.f('fk_totp_uses_operator_id_operators')),
    sa.PrimaryKeyConstraint('operator_id', 'step', name=op.f('pk_totp_uses'))
    )
    op.create_table('approvals',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('requested_by', sa.String(length=40), nullable=False),
    sa.Column('requested_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.Column('expires_at', vault.storage.schema.UTCDateTime(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('approved_by', sa.String(length=40), nullable=True),
    sa.Column('approved_at', vault.storage.schema.UTCDateTime(), nullable=True),
    sa.Column('result', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals'))
    )
    op.create_index(op.f('ix_approvals_status'), 'approvals', ['status'], unique=False)
    op.add_column('clients', sa.Column('previous_key_hash', sa.LargeBinary(length=32), nullable=True))
    op.add_column('clients', sa.Column('previous_key_expires_at', vault.storage.schema.UTCDateTime(), nullable=True))
    op.create_index(op.f('ix_clients_previous_key_hash'), 'clients', ['previous_key_hash'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_clients_previous_key_hash'), table_name='clients')
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('previous_key_expires_at')
        batch_op.drop_column('previous_key_hash')
    op.drop_index(op.f('ix_approvals_status'), table_name='approvals')
    op.drop_table('approvals')
    op.drop_table('totp_uses')
    op.drop_index(op.f('ix_operator_sessions_operator_id'), table_name='operator_sessions')
    op.drop_table('operator_sessions')
    op.drop_table('operators')
