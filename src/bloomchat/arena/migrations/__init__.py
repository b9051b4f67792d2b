"""Alembic migrations of the arena schema, shipped inside the package and run on every open."""
