"""PostgreSQL projections of run journals, audit verification, export and checkpoints."""

from projections._audit import (
    AuditReport,
    ChainChecker,
    Checkpoint,
    Erased,
    Problem,
    audit,
    check_postgres,
    check_stream,
)
from projections._checkpoints import Signer, load_public_key, public_pem, verify_signature
from projections._export import FORMAT, export_run, verify_export
from projections._projector import Projector, ProjectorStats
from projections._queries import EventRow, Lag, Queries, RunRow
from projections._schema import MIGRATIONS, drop_projections, erase_rows, migrate

__all__ = [
    "AuditReport",
    "ChainChecker",
    "Checkpoint",
    "Erased",
    "EventRow",
    "FORMAT",
    "Lag",
    "MIGRATIONS",
    "Problem",
    "Projector",
    "ProjectorStats",
    "Queries",
    "RunRow",
    "Signer",
    "audit",
    "check_postgres",
    "check_stream",
    "drop_projections",
    "erase_rows",
    "export_run",
    "load_public_key",
    "migrate",
    "public_pem",
    "verify_export",
    "verify_signature",
]
