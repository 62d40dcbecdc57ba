"""Built-in effect handlers: ``cli`` (run a command of an allow-list), ``http`` (one
request) and ``llm.chat`` (deterministic mock provider).

Serve them with ``mainspring handlers --app handlers:builtin_handlers`` (``cli`` too
with ``--cli-allow``) or as part of ``mainspring dev``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, Process

from handlers._cli_allow import CliAllow
from handlers._service import EffectContext, Handlers
from schemas import ErrorCode, TerminalError

SHELLS = ("bash", "sh", "powershell", "pwsh", "cmd")


class CliRequest(msgspec.Struct, frozen=True, kw_only=True):
    command: str | list[str]
    cwd: str | None = None
    shell: str = "bash"
    exit_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    parse_json: bool = False
    env: dict[str, str] = msgspec.field(default_factory=dict)


class CliResult(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int
    stdout: str
    stderr: str
    json: object = None


class CommandFailed(Exception):
    """A command exited with a code its step does not accept (retryable by policy).

    Internal to the ``cli`` handler (not in the MainspringError tree): the run sees it
    only as the effect's error type, this class's name.
    """


class ChatMessage(msgspec.Struct, frozen=True):
    role: str
    content: str


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    messages: list[ChatMessage]
    model: str = "mock"
    models: list[str] = msgspec.field(default_factory=list)


class ChatResponse(msgspec.Struct, frozen=True, kw_only=True):
    content: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float = 0.0


class HttpRequest(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    method: str = "GET"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: Any = None
    status_codes: list[int] = msgspec.field(default_factory=list)
    """accepted statuses; empty means any 2xx"""


class HttpResponse(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    headers: dict[str, str]
    body: Any


class HttpStatusError(Exception):
    """An HTTP status the step does not accept; 5xx and 429 are retried by policy.

    Internal to the ``http`` handler (not in the MainspringError tree): the run sees it
    only as the effect's error type, this class's name.
    """


def command_lines(req: CliRequest) -> list[str]:
    """The request's command lines; a list runs as its lines joined by ``&&``."""
    return req.command if isinstance(req.command, list) else [req.command]


def command_line(req: CliRequest) -> list[str]:
    """The argv that runs the whole request in its shell."""
    command = " && ".join(command_lines(req))
    if req.shell not in SHELLS:
        raise TerminalError(
            f"unknown shell {req.shell!r}; use one of {', '.join(SHELLS)}", type=ErrorCode.CLI_SHELL
        )
    path = shutil.which(req.shell)
    if path is None:
        raise TerminalError(
            f"shell {req.shell!r} is not installed on this handler's host", type=ErrorCode.CLI_SHELL
        )
    flag = "/c" if req.shell == "cmd" else ("-Command" if "sh" not in req.shell else "-c")
    return [path, flag, command]


async def run_command(
    argv: list[str], *, cwd: str | None, env: dict[str, str], drain_s: float = 5.0
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` to its end: (exit code, stdout, stderr).

    When cancelled (the effect's timeout, the handler service stopping) the command's
    whole process group is killed. Either way the process is reaped and both pipes are
    read to their end (which closes them) before this returns: nothing is left for the
    event loop to finish later, when it may already be gone (a pipe left so is closed
    by the garbage collector, with a ResourceWarning, in whatever runs next).
    """
    with anyio.CancelScope(shield=True):  # a spawn cut short leaves its pipes to asyncio
        proc = await anyio.open_process(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, killed as one
        )
    chunks: tuple[list[bytes], list[bytes]] = ([], [])

    async def drain(stream: ByteReceiveStream | None, into: list[bytes]) -> None:
        if stream is not None:
            async for chunk in stream:
                into.append(chunk)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, proc.stdout, chunks[0])
            tg.start_soon(drain, proc.stderr, chunks[1])
            await proc.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                _kill_group(proc)
            # Bounded: a grandchild that left the group may hold a pipe open; aclose()
            # then closes our end.
            with anyio.move_on_after(drain_s):
                await drain(proc.stdout, chunks[0])
                await drain(proc.stderr, chunks[1])
            await proc.aclose()
    code = proc.returncode
    assert code is not None
    return code, b"".join(chunks[0]), b"".join(chunks[1])


def _kill_group(proc: Process) -> None:
    if sys.platform == "win32":
        proc.kill()
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _run_allowed(
    req: CliRequest, allow: CliAllow, effect_id: str
) -> tuple[int, bytes, bytes]:
    shell = command_line(req)  # the shell is checked first, whatever runs the lines
    argvs = allow.commands(command_lines(req), req.shell, req.env, req.cwd)
    env = {**os.environ, "MAINSPRING_EFFECT_ID": effect_id, **req.env}
    if argvs is None:
        return await run_command(shell, cwd=req.cwd, env=env)
    code, out, err = 0, b"", b""
    for argv in argvs:  # as the shell's `&&`: on to the next line only after a 0
        code, more_out, more_err = await run_command(argv, cwd=req.cwd, env=env)
        out, err = out + more_out, err + more_err
        if code != 0:
            break
    return code, out, err


def builtin_handlers(*, cli_allow: str | Iterable[str] | None = None) -> Handlers:
    """``http``, ``llm.chat`` and, given an allow-list, ``cli``.

    ``cli`` is off unless ``cli_allow`` names the programs it may run (``"git,python3"``,
    or ``"*"`` for any command): see ``CliAllow`` and docs/security.md."""
    hs = Handlers()
    if cli_allow is not None:
        _serve_cli(hs, CliAllow(cli_allow))
    _serve_http(hs)
    _serve_llm(hs)
    return hs


def _serve_cli(hs: Handlers, allow: CliAllow) -> None:
    @hs.handler("cli", concurrency=8)
    async def cli(req: CliRequest, fx: EffectContext) -> CliResult:
        """Run a command the allow-list permits; stdout parsed as JSON when asked."""
        code, out, err = await _run_allowed(req, allow, fx.effect_id)
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        if code not in req.exit_codes:
            raise CommandFailed(
                f"exit code {code} (accepted: {req.exit_codes}); stderr: {stderr.strip()[-500:]}"
            )
        parsed: object = None
        if req.parse_json:
            try:
                parsed = msgspec.json.decode(stdout.strip() or "null")
            except msgspec.DecodeError as e:
                raise TerminalError(
                    f"stdout is not JSON ({e}): {stdout[:200]!r}", type=ErrorCode.CLI_OUTPUT
                ) from e
        return CliResult(exit_code=code, stdout=stdout, stderr=stderr, json=parsed)


def _serve_http(hs: Handlers) -> None:
    @hs.handler("http", concurrency=32)
    async def http(req: HttpRequest, fx: EffectContext) -> HttpResponse:
        """One HTTP request; JSON bodies in and out; the effect id as Idempotency-Key."""
        import httpx

        headers = {"Idempotency-Key": fx.effect_id, **req.headers}
        kwargs: dict[str, Any] = {}
        if isinstance(req.body, str | bytes):
            kwargs["content"] = req.body
        elif req.body is not None:
            kwargs["json"] = req.body
        async with httpx.AsyncClient(timeout=30.0) as client:
            resp = await client.request(req.method.upper(), req.url, headers=headers, **kwargs)
        ok = resp.status_code in req.status_codes if req.status_codes else resp.is_success
        if not ok:
            message = (
                f"{req.method.upper()} {req.url} answered {resp.status_code}: {resp.text[:300]}"
            )
            if resp.status_code >= 500 or resp.status_code == 429:
                raise HttpStatusError(message)
            raise TerminalError(message, type=ErrorCode.HTTP_STATUS)
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text
        return HttpResponse(status=resp.status_code, headers=dict(resp.headers), body=body)


def _serve_llm(hs: Handlers) -> None:
    @hs.handler("llm.chat", concurrency=32)
    async def chat(req: ChatRequest, fx: EffectContext) -> ChatResponse:
        """An OpenAI-compatible chat completion with a model fallback chain; tokens and
        cost in the result (so they are journaled). MAINSPRING_LLM_BASE_URL unset: the
        deterministic mock provider (tests and demos)."""
        import os

        base_url = os.environ.get("MAINSPRING_LLM_BASE_URL")
        models = req.models or [req.model]
        if not base_url:
            return _mock_chat(req, models[0])
        return await _openai_chat(req, models, base_url, fx)


def _mock_chat(req: ChatRequest, model: str) -> ChatResponse:
    last = req.messages[-1].content if req.messages else ""
    content = f"[{model}] {last[:200]}"
    words = sum(len(m.content.split()) for m in req.messages)
    return ChatResponse(
        content=content, model=model, input_tokens=words, output_tokens=len(content.split())
    )


def _prices() -> dict[str, tuple[float, float]]:
    """USD per 1k input / output tokens by model, from MAINSPRING_LLM_PRICES (JSON)."""
    import os

    raw = os.environ.get("MAINSPRING_LLM_PRICES")
    if not raw:
        return {}
    return msgspec.json.decode(raw, type=dict[str, tuple[float, float]])


async def _openai_chat(
    req: ChatRequest, models: list[str], base_url: str, fx: EffectContext
) -> ChatResponse:
    import os

    import httpx

    headers = {"Idempotency-Key": fx.effect_id}
    if key := os.environ.get("MAINSPRING_LLM_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=120.0) as client:
        for model in models:  # the fallback chain: next model on a transient failure
            try:
                resp = await client.post(
                    "/chat/completions",
                    headers=headers,
                    json={"model": model, "messages": messages},
                )
            except httpx.HTTPError as e:
                failures.append(f"{model}: {e!r}")
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                failures.append(f"{model}: HTTP {resp.status_code}")
                continue
            if resp.is_error:
                raise TerminalError(
                    f"{model}: HTTP {resp.status_code}: {resp.text[:300]}",
                    type=ErrorCode.LLM_REQUEST,
                )
            data = resp.json()
            usage = data.get("usage") or {}
            tokens_in = int(usage.get("prompt_tokens", 0))
            tokens_out = int(usage.get("completion_tokens", 0))
            price_in, price_out = _prices().get(model, (0.0, 0.0))
            return ChatResponse(
                content=data["choices"][0]["message"]["content"],
                model=data.get("model", model),
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cost_usd=round(tokens_in / 1000 * price_in + tokens_out / 1000 * price_out, 6),
            )
    raise LlmUnavailable("every model failed: " + "; ".join(failures))


class LlmUnavailable(Exception):
    """All models of the chain failed transiently (retried by the effect's policy).

    Internal to the ``llm.chat`` handler (not in the MainspringError tree): the run sees
    it only as the effect's error type, this class's name.
    """
