"""llm.chat against an OpenAI-compatible endpoint: fallback chain, tokens and cost recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from handlers import builtin_handlers
from projections import Projector, Queries
from schemas import EffectCompleted
from streams import Subjects
from tests.apps import registry
from tests.harness import events_of, projected, running

pytestmark = pytest.mark.anyio
SEEN: list[dict[str, object]] = []


class _OpenAI(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        SEEN.append(
            {
                "model": body["model"],
                "auth": self.headers.get("Authorization"),
                "key": self.headers.get("Idempotency-Key"),
            }
        )
        if body["model"] == "big-model":  # overloaded: the chain moves on
            self.send_response(503)
            self.end_headers()
            return
        reply = {
            "model": body["model"],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300},
            "choices": [{"message": {"role": "assistant", "content": "forty-two"}}],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


async def test_fallback_chain_tokens_and_cost(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing first model falls back to the next; tokens and USD land in the journal
    and in the projections (per effect and per run)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MAINSPRING_LLM_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("MAINSPRING_LLM_API_KEY", "sk-test")
    monkeypatch.setenv("MAINSPRING_LLM_PRICES", '{"small-model": [0.5, 2.0]}')
    try:
        projector = Projector(nc, pool, subjects)
        async with running(
            nc, subjects, registry, builtin_handlers(cli_allow="*"), projector=projector
        ) as h:
            rid = await h.client.start("ask", "the answer?", run_id="llm1")
            assert await h.client.result(rid, timeout=20) == "forty-two"
            await projected(projector, nc, subjects)
            done = events_of(await h.client.history(rid), EffectCompleted)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert [s["model"] for s in SEEN] == ["big-model", "small-model"]
    assert SEEN[0]["auth"] == "Bearer sk-test"
    assert SEEN[0]["key"] == "llm1.fx.1"
    result = json.loads(bytes(done[0].result))
    assert result["model"] == "small-model"
    assert (result["input_tokens"], result["output_tokens"]) == (1200, 300)
    assert result["cost_usd"] == pytest.approx(1.2 * 0.5 + 0.3 * 2.0)
    run = await Queries(pool).run("llm1")
    assert run is not None
    assert run.tokens == 1500
    assert run.cost_usd == pytest.approx(1.2)
    [effect] = await Queries(pool).effects("llm1")
    assert (effect["input_tokens"], effect["cost_usd"]) == (1200, pytest.approx(1.2))
