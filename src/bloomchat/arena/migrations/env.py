"""Alembic environment: runs on the connection bloomchat passes in (`config.attributes['connection']`)."""

from alembic import context

from bloomchat.arena.db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # plain `alembic` CLI use: -x url=... or sqlalchemy.url
    from sqlalchemy import create_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    connection = create_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
