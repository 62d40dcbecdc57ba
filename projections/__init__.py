"""PostgreSQL projections of run journals (see issue: projections and audit).

Nothing public yet: the package exists so the layering test can pin it.
"""

__all__: list[str] = []
