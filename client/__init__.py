"""The client: start runs, await results, resume waiting runs, cancel, read journals.

Imports ``schemas`` and ``streams`` only, so a service that starts runs loads no worker
code: ``from client import Client`` (or ``mainspring.Client``).
"""

from client._client import Client, RunStatus, status_from_journal

__all__ = ["Client", "RunStatus", "status_from_journal"]
