"""Database layer: ORM models, engine and session factory, repositories.

Only the repositories in this package write SQL. The schema comes from the
Alembic migrations in ``migrations/``, never from ``create_all``.
"""
