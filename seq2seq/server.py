"""`seq2seq serve`: checkpoint(s) behind a JSON API and a web page that shows the attention.

    POST /v1/translate   one sentence or a list, with decoding options -> hypotheses (text, score, pieces,
                         and the attention when asked)
    POST /v1/score       sources and their translations -> log-probabilities (forced decoding)
    GET  /v1/health      alive, and how busy
    GET  /v1/model       the model card: languages, attention, sizes, vocabulary, versions, training record
    GET  /               the web page (seq2seq/web: served from the package, nothing from a CDN)
    GET  /docs           the API described (from /openapi.json)

Requests are gathered into batches by `batching.DynamicBatcher`, which decodes in a worker thread.
Every user mistake is a 4xx with a one-line `detail`: malformed JSON 400, a wrong field or value 422
naming it, too many sentences, too long a sentence or too large a body 413 naming the limit. With an
API key, the /v1 endpoints want `Authorization: Bearer KEY`. No request names a file or a path: the
server reads only the checkpoints it was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import ipaddress
import json
import logging
import math
import platform
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Literal

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from seq2seq.batching import DynamicBatcher
from seq2seq.config import ConfigError, DecodeConfig, ServeLimits, config_to_dict, decode_with
from seq2seq.device import check_precision
from seq2seq.errors import UserError
from seq2seq.quantize import check_quantize_precision
from seq2seq.runinfo import package_version
from seq2seq.score import Scored
from seq2seq.search import rows_per_sentence
from seq2seq.translate import Translation, Translator

log = logging.getLogger(__name__)

WEB = resources.files("seq2seq") / "web"
LOCAL_HOSTS = ("localhost",)


# --- requests and their checks -------------------------------------------------------------------------

DECODE_FIELDS = (
    "beam",
    "alpha",
    "coverage_penalty",
    "max_output_ratio",
    "n_best",
    "sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "precision",
)


class DecodeOptions(BaseModel):
    """Decoding options for one request; what is left out comes from the server's defaults (GET /v1/model)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    beam: int | None = Field(None, description="beam size; 1 = greedy search")
    alpha: float | None = Field(None, description="GNMT length penalty exponent; 0 = none")
    coverage_penalty: float | None = Field(None, description="GNMT coverage penalty beta; 0 = none")
    max_output_ratio: float | None = Field(None, description="outputs stop at this x source length + 5 pieces")
    n_best: int | None = Field(None, description="hypotheses per sentence (samples, when sampling)")
    sample: bool | None = Field(None, description="sample translations instead of searching")
    temperature: float | None = Field(None, description="sampling temperature")
    top_k: int | None = Field(None, description="sample from the k most probable pieces; 0 = all")
    top_p: float | None = Field(None, description="nucleus sampling: the smallest set with this probability")
    seed: int | None = Field(None, description="sampling seed: the same seed gives the same samples")
    precision: Literal["fp32", "bf16"] | None = Field(None, description="bf16: autocast matmuls to bfloat16")


class Sentences(BaseModel):
    """What to translate (the first fields of a translate request)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(description="one sentence, or a list of sentences")
    attention: bool = Field(False, description="include each hypothesis's attention matrix [output, source]")


class TranslateRequest(DecodeOptions, Sentences):
    """Sentences to translate and how."""


class ScoreRequest(BaseModel):
    """Sources and their translations, to score under the model."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: str | list[str] = Field(description="one source sentence, or a list")
    target: str | list[str] = Field(description="its translation(s), one per source")
    per_piece: bool = Field(False, description="include each target piece and its log-probability")


def request_sentences(value: str | list[str], field: str, limits: ServeLimits) -> list[str]:
    """The request's sentences as a list, within the limits (413 names the one exceeded)."""
    lines = [value] if isinstance(value, str) else list(value)
    if not lines:
        raise HTTPException(422, f"{field}: give at least one sentence")
    if len(lines) > limits.max_sentences:
        raise HTTPException(
            413,
            f"{field}: {len(lines)} sentences; this server takes at most {limits.max_sentences} "
            "per request (seq2seq serve --max-sentences)",
        )
    for number, line in enumerate(lines):
        where = field if isinstance(value, str) else f"{field}[{number}]"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" escapes decode to lone surrogates, which are not text
            code = ord(line[exc.start])
            raise HTTPException(422, f"{where}: character {exc.start + 1} is a lone surrogate (U+{code:04X}), not text")
        if len(line) > limits.max_chars:
            raise HTTPException(
                413,
                f"{where}: {len(line)} characters; this server takes at most {limits.max_chars} "
                "per sentence (seq2seq serve --max-chars)",
            )
    return lines


def decoding_limits(limits: ServeLimits) -> list[tuple[str, float, str]]:
    """(decoding option, its largest allowed value, the limit's flag)."""
    return [
        ("beam", limits.max_beam, "--max-beam"),
        ("n_best", limits.max_beam, "--max-beam"),
        ("max_output_ratio", limits.max_request_output_ratio, "--max-request-output-ratio"),
    ]


def request_decoding(
    request: DecodeOptions,
    base: DecodeConfig,
    limits: ServeLimits,
    device: torch.device | str = "cpu",
    quantize: str = "none",
) -> DecodeConfig:
    """The server's decoding options with the request's applied, checked as the command line checks them
    (`quantize`: the served models' quantization, which a request's precision must suit)."""
    given = {name: getattr(request, name) for name in DECODE_FIELDS if getattr(request, name) is not None}
    try:
        decode = decode_with(base, given, warn_unused=False, name=lambda key: f"field '{key}'")
        check_quantize_precision(quantize, decode.precision, "field 'precision'", "this server's --quantize")
        check_precision(device, decode.precision, "field 'precision'")
    except (ConfigError, UserError) as exc:
        raise HTTPException(422, str(exc)) from None
    for name, limit, flag in decoding_limits(limits):
        if getattr(decode, name) > limit:
            raise HTTPException(
                422, f"field '{name}': {getattr(decode, name)} is more than this server allows ({limit}; {flag})"
            )
    return decode


def check_defaults_within(decode: DecodeConfig, limits: ServeLimits) -> None:
    """The server's own decoding options must be ones a request may ask for (else every request would fail)."""
    for name, limit, flag in decoding_limits(limits):
        if getattr(decode, name) > limit:
            raise UserError(
                f"the server's {name} {getattr(decode, name)} (its flag, else the checkpoint's decode.{name}) is "
                f"more than {flag} {limit}: lower the one or raise the other"
            )


def check_attention_size(lines: list[str], decode: DecodeConfig, limits: ServeLimits) -> None:
    """With attention, sentences x hypotheses within --max-attention-matrices (each matrix can be 250 x 380)."""
    matrices = len(lines) * decode.n_best
    if matrices > limits.max_attention_matrices:
        raise HTTPException(
            413,
            f"attention for {len(lines)} sentences x {decode.n_best} hypotheses is {matrices} matrices; this server "
            f"gives at most {limits.max_attention_matrices} per request (seq2seq serve --max-attention-matrices)",
        )


# --- responses -------------------------------------------------------------------------------------------


def finite(value: float) -> float | None:
    """JSON has no infinity or NaN: such a score is null."""
    return value if math.isfinite(value) else None


def translation_json(translation: Translation, attention: bool) -> dict[str, Any]:
    """A translation as the API returns it."""
    hypotheses = []
    for candidate in translation.hypotheses:
        hypothesis: dict[str, Any] = {
            "text": candidate.text,
            "score": finite(candidate.score),
            "log_prob": finite(candidate.log_prob),
            "pieces": candidate.pieces,
        }
        if attention:
            hypothesis["attention"] = candidate.attention.float().numpy().round(4).tolist()
        hypotheses.append(hypothesis)
    return {"source": translation.source, "source_pieces": translation.source_pieces, "hypotheses": hypotheses}


def score_json(scored: Scored | None, per_piece: bool) -> dict[str, Any] | None:
    """A score as the API returns it (null for an empty source)."""
    if scored is None:
        return None
    result: dict[str, Any] = {"log_prob": finite(scored.log_prob), "per_piece": finite(scored.per_piece)}
    if per_piece:
        result.update(pieces=scored.pieces, piece_log_probs=[finite(v) for v in scored.piece_log_probs])
    return result


def model_card(translator: Translator, limits: ServeLimits) -> dict[str, Any]:
    """What GET /v1/model says: what the model translates, how it is built, how it was trained, what serves it."""
    config, tokenizer, loaded = translator.config, translator.tokenizer, translator.loaded
    settings = config_to_dict(config)  # plain values; the train section loses the training machine's paths below
    checkpoints = []
    for path, member in zip(loaded.paths, loaded.members):
        run = {key: value for key, value in member.run.items() if key in RUN_FIELDS}
        if isinstance(member.run.get("init_from"), dict):  # fine-tuned: from which checkpoint, without its path
            run["init_from"] = {k: v for k, v in member.run["init_from"].items() if k != "path"}
        checkpoints.append(
            {"name": path.name, "step": member.step, "best_bleu": member.best_bleu, "run": run}
            | ({"averaged_from": len(member.averaged_from)} if member.averaged_from else {})
        )
    return {
        "name": config.name,
        "languages": {"source": config.data.src_lang, "target": config.data.tgt_lang},
        "attention": settings["model"]["attention"],
        "model": settings["model"],
        "parameters": loaded.parameters,
        "vocabulary": {
            "source_size": tokenizer.src_vocab_size,
            "target_size": tokenizer.tgt_vocab_size,
            "joint": tokenizer.joint,
            "model_type": config.tokenizer.model_type,
        },
        "ensemble": {"checkpoints": len(checkpoints), "weights": loaded.ensemble.weights},
        "checkpoints": checkpoints,
        "training": {
            "tokenizer": settings["tokenizer"],
            "train": {key: value for key, value in settings["train"].items() if key not in ("run_dir", "init_from")},
        },
        "decode": dataclasses.asdict(translator.options),
        "limits": dataclasses.asdict(limits),
        "device": str(translator.device),
        "quantize": translator.quantize,
        "versions": {name: package_version(name) for name in SERVER_PACKAGES} | {"python": platform.python_version()},
    }


# What /v1/model shows of a checkpoint's run record: nothing that names a path or a machine (command lines do).
RUN_FIELDS = ("versions", "train_data_sha256", "saved_at", "processes")
SERVER_PACKAGES = ("seq2seq", "torch", "sentencepiece", "sacrebleu", "fastapi", "uvicorn", "pydantic")


# --- the app ----------------------------------------------------------------------------------------------


def create_app(
    translator: Translator,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> FastAPI:
    """The ASGI app serving `translator`: the /v1 API, the web page and its files.

    allowed_hosts: the Host headers to answer (None: any); a server on the loopback names its own, so that
    a web page elsewhere cannot reach it under a name of its own pointed at 127.0.0.1 (DNS rebinding)."""
    limits = limits or ServeLimits()
    limits.check()
    if api_key is not None and not api_key.strip():
        raise UserError("the API key is empty: give a key, or None to serve without one")
    check_defaults_within(translator.options, limits)
    # A gathered batch holds up to decode.batch_tokens source pieces: the decoding sorts them by length and cuts
    # them into batches of batch_tokens / beam padded pieces, so similar lengths decode together.
    gather_tokens = translator.options.batch_tokens

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = DynamicBatcher(
            _work(translator), limits.max_wait_ms / 1000, gather_tokens, on_idle=release_free_memory
        )
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()

    app = FastAPI(
        title="seq2seq",
        summary=f"{translator.config.data.src_lang} -> {translator.config.data.tgt_lang} translation",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN; ours (/docs) do not
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(RequestBody, max_bytes=limits.max_body_bytes)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(_api(translator, limits, api_key))
    app.get("/", include_in_schema=False)(_page("index.html"))
    app.get("/docs", include_in_schema=False)(_page("docs.html"))
    app.mount("/static", StaticFiles(directory=str(WEB)), name="static")
    return app


def _api(translator: Translator, limits: ServeLimits, api_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_key_check(api_key))] if api_key else [])
    card = model_card(translator, limits)

    async def _queued(request: Request, kind: str, options: Any, items: list[Any], sources: list[str]) -> list[Any]:
        """Queue the items for a batch (503 when the queue is full) and wait for them while the client is there."""
        batcher: DynamicBatcher = request.app.state.batcher
        if batcher.queued >= limits.max_queued:
            raise HTTPException(
                503,
                f"{batcher.queued} requests are waiting, the most this server queues (--max-queued): try again soon",
                {"Retry-After": "1"},
            )
        tokens = sum(len(ids) + 1 for ids in translator.tokenizer.encode_src(sources))
        return await _while_connected(request, batcher.submit(kind, options, items, tokens))

    @router.post("/translate", summary="Translate one sentence or a list")
    async def translate(body: TranslateRequest, request: Request) -> dict[str, Any]:
        lines = request_sentences(body.text, "text", limits)
        decode = request_decoding(body, translator.options, limits, translator.device, translator.quantize)
        if body.attention:
            check_attention_size(lines, decode, limits)
        found = await _queued(request, "translate", decode, lines, lines)
        return {
            "translations": [translation_json(t, body.attention) for t in found],
            "decode": dataclasses.asdict(decode),
        }

    @router.post("/score", summary="Score given translations (forced decoding)")
    async def score(body: ScoreRequest, request: Request) -> dict[str, Any]:
        sources = request_sentences(body.source, "source", limits)
        targets = request_sentences(body.target, "target", limits)
        if len(sources) != len(targets):
            raise HTTPException(422, f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        found = await _queued(request, "score", None, list(zip(sources, targets)), sources)
        return {"scores": [score_json(s, body.per_piece) for s in found]}

    @router.get("/health", summary="Alive, and how busy")
    async def health(request: Request) -> dict[str, Any]:
        batcher: DynamicBatcher = request.app.state.batcher
        stats = dataclasses.asdict(batcher.stats)
        uptime = round(time.monotonic() - stats.pop("started"), 3)
        return {"status": "ok", "queued": batcher.queued, "decoding": batcher.busy, "uptime_s": uptime} | stats

    @router.get("/model", summary="The model card")
    async def model() -> dict[str, Any]:
        return card

    return router


def whole_batches(decode: DecodeConfig) -> DecodeConfig:
    """`decode` with batches of batch_tokens padded source pieces for each row of the beam, not in all.

    A gathered batch (at most batch_tokens source pieces) then decodes in one or two passes instead of
    being cut into batches of batch_tokens / beam pieces: one pass over 30 sentences costs less than three
    over 10 (the search's work per step is mostly fixed). Memory grows by the beam size at most."""
    return dataclasses.replace(decode, batch_tokens=decode.batch_tokens * rows_per_sentence(decode))


def _work(translator: Translator) -> Callable[[str, Any, list[Any]], list[Any]]:
    """The batcher's work function: translate or score a batch (in the worker thread)."""

    def work(kind: str, options: Any, items: list[Any]) -> list[Any]:
        with torch.inference_mode():
            if kind == "translate":
                return translator.translate(items, decode=whole_batches(options))
            return translator.score([source for source, _ in items], [target for _, target in items])

    return work


def _malloc_trim() -> Callable[[], Any]:
    """glibc's malloc_trim(0), or a no-op where there is no glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


# Once the server has been idle for a second, the memory its batches freed goes back to the system: glibc
# otherwise keeps some of it, differently after each batch, so that the resident memory of a server between
# bursts wandered 388-529 MiB (scripts/bench/serve_load.py) though it held nothing more. Not after every batch:
# under load that cost 5-15% of the throughput (the next batch faults its pages in again).
release_free_memory = _malloc_trim()


async def _while_connected(request: Request, work: Awaitable[list[Any]]) -> list[Any]:
    """Await `work`, cancelling it if the client disconnects first (a job not yet in a batch is dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (shutdown): the job must not stay queued
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise HTTPException(499, "the client closed the connection")  # nobody reads this
    return task.result()


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _key_check(api_key: str) -> Callable[[Request], None]:
    expected = api_key.encode()

    def check(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "give the server's key: Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})

    return check


def _page(name: str) -> Callable[[], Any]:
    async def page() -> FileResponse:
        return FileResponse(str(WEB / name), media_type="text/html")

    return page


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """400 for a body that is not JSON; 422 naming the first wrong field otherwise (all of them in `errors`)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", error.get("msg"))
            return JSONResponse({"detail": f"the body is not valid JSON: {reason}"}, status_code=400)
    first = max(errors, key=lambda e: len(_field_path(e.get("loc", ())).split(".")))  # the most precise
    field = _field_path(first.get("loc", ()))
    if first.get("type") == "extra_forbidden":
        detail = f"unknown field '{field}'; see GET /openapi.json for the fields"
    elif not field:
        detail = f"the body: {first.get('msg')} (send a JSON object)"
    else:  # a union's alternatives each give an error for the same field: all are named
        reasons = dict.fromkeys(e.get("msg") for e in errors if _field_path(e.get("loc", ())) == field)
        detail = f"field '{field}': " + ", or ".join(str(reason) for reason in reasons)
    plain = [{key: error.get(key) for key in ("loc", "msg", "type")} for error in errors]
    return JSONResponse({"detail": detail, "errors": plain}, status_code=422)


def _field_path(location: Sequence[Any]) -> str:
    """'text.2' for ('body', 'text', 'list[str]', 2): the field as the client wrote it, without pydantic's
    names of a union's alternatives."""
    parts = [str(part) for part in location[1:] if not (isinstance(part, str) and UNION_TAG.fullmatch(part))]
    return ".".join(parts)


UNION_TAG = re.compile(r"str|int|float|bool|list\[.*\]")


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error (see the server's log); the server is still running"}, 500)


class RequestBody:
    """ASGI middleware: reads the whole request body before the app sees it, and answers for the body itself:
    413 past `max_bytes`, 415 when a body is not declared JSON (so that a web page elsewhere cannot post a
    form to this server), 400 when it is not UTF-8. A leading byte order mark is dropped (JSON parsers may)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, self._too_large())
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _refuse(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks).removeprefix(b"\xef\xbb\xbf")
        problem = _body_problem(body, headers.get(b"content-type", b"").decode("latin-1"))
        if problem is not None:
            await _refuse(send, *problem)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"the body is larger than this server takes ({self.max_bytes} bytes; seq2seq serve --max-body-bytes)"


def _body_problem(body: bytes, content_type: str) -> tuple[int, str] | None:
    """(status, reason) for a body that is not JSON in UTF-8, else None."""
    if not body:
        return None
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        given = f"'{media}'" if media else "none"
        return 415, f"send the body as JSON with the header Content-Type: application/json (got {given})"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return 400, f"the body is not UTF-8 text (byte {exc.start + 1} cannot start or continue a character)"
    return None


async def _refuse(send: Any, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# --- running it -------------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or one line saying why not."""
    if not 0 <= port <= 65535:
        raise UserError(f"cannot listen on {host}:{port}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def is_local(host: str) -> bool:
    """Whether `host` is this machine's loopback (only local programs can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    translator: Translator,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    api_key: str | None = None,
    access_log: bool = True,
) -> None:
    """Serve `translator` until Ctrl-C (returns) or SIGTERM (ends the process): uvicorn stops taking requests and
    waits up to 5 s for those in flight; then the batch in the worker thread, if any, finishes."""
    allowed = ["127.0.0.1", "localhost", "[::1]", "::1"] if is_local(host) else None
    app = create_app(translator, limits, api_key, allowed)
    listener = bind(host, port)
    if not is_local(host):
        log.warning(
            "listening on %s: any machine that can reach this one can use the model%s",
            host,
            "" if api_key else " (no --api-key: without a key)",
        )
    address = listener.getsockname()
    url = f"http://{'[' + address[0] + ']' if ':' in address[0] else address[0]}:{address[1]}"
    src, tgt = translator.config.data.src_lang, translator.config.data.tgt_lang
    log.info("serving %s -> %s at %s/ (API: %s/v1, described at %s/docs); Ctrl-C stops", src, tgt, url, url, url)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = logging.getLogger("seq2seq").handlers
        logging.getLogger(name).setLevel(logging.INFO)
    config = uvicorn.Config(app, log_config=None, access_log=access_log, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then raised the Ctrl-C again: the normal way out
        pass
    log.info("stopped")


@contextlib.contextmanager
def serving_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread (tests, notebooks); yields its URL, stops on exit."""
    listener = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="seq2seq-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start; see the log")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()
