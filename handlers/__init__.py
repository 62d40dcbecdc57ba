"""Effect handlers: the service that serves effect requests (retries, heartbeats,
at-most-once, results) and the built-in handlers (``cli``, ``http``, ``llm.chat``).

A handler is a separate service: this package imports ``schemas`` and ``streams`` only,
never the run kernel (``actors``), and a handler written in another language speaks the
same subjects (docs/handlers.md).
"""

from handlers._builtins import builtin_handlers
from handlers._service import EffectContext, Handlers, HandlerService

__all__ = ["EffectContext", "HandlerService", "Handlers", "builtin_handlers"]
