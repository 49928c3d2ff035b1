"""`seq2seq serve`: the real app (seq2seq.server.create_app) over the toy model, served by a real uvicorn in a thread,
called with httpx (and a raw socket where a client must misbehave): results equal the Translator's, every
user mistake is a 4xx whose one-line detail names the field or the limit, the API key, the web page, batching
under concurrency, health while decoding, clients that go away, and no request ever gives a 500."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import toy_sentence

from seq2seq.config import ServeLimits
from seq2seq.server import DECODE_FIELDS, create_app, serving_in_thread
from seq2seq.translate import Translation, Translator

JSON = {"Content-Type": "application/json"}
V1 = ("/v1/translate", "/v1/score", "/v1/health", "/v1/model")
WEB_FILES = ("index.html", "docs.html", "app.js", "docs.js", "style.css")
# small limits, for the 413s and the --max-beam 422s
SMALL = ServeLimits(max_sentences=3, max_chars=40, max_body_bytes=500, max_beam=5, max_request_output_ratio=2.0)


# --- servers and helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(translator: Any, limits: ServeLimits | None = None, api_key: str | None = None) -> Iterator[Server]:
    """The real app over `translator`, served by uvicorn in a thread, with an httpx client for it."""
    app = create_app(translator, limits, api_key)
    with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield Server(url, app, client)


@dataclasses.dataclass
class Server:
    url: str
    app: Any
    client: httpx.Client

    def health(self) -> dict[str, Any]:
        response = self.client.get("/v1/health")
        assert response.status_code == 200, response.text
        return response.json()

    def translate(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/v1/translate", json=body)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def server(translator) -> Iterator[Server]:
    """One server with the default limits for the module (tests must not rely on its counters)."""
    with serving(translator) as running:
        yield running


@pytest.fixture(scope="module")
def small(translator) -> Iterator[Server]:
    """A server with small limits."""
    with serving(translator, SMALL) as running:
        yield running


def detail(response: httpx.Response, status: int) -> str:
    """The response has `status` and a one-line `detail`; returns the detail."""
    assert response.status_code == status, response.text
    text = response.json()["detail"]
    assert isinstance(text, str) and text and "\n" not in text, text
    return text


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` until it holds (never a fixed sleep as an assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def raw_request(url: str, data: bytes, timeout: float = 60) -> tuple[int, bytes]:
    """Send `data` as is over a new connection (no client-side path normalisation); the status and the body."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def post_bytes(path: str, body: bytes, host: str = "127.0.0.1", length: int | None = None) -> bytes:
    """A raw HTTP/1.1 POST with a JSON body (Content-Length `length`, the body's own by default)."""
    length = len(body) if length is None else length
    headers = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    return (headers + "Connection: close\r\n\r\n").encode() + body


def expected(translation: Translation) -> dict[str, Any]:
    """What the API should say of a translation made by the Translator directly (scores compared approximately)."""
    return {
        "source": translation.source,
        "source_pieces": translation.source_pieces,
        "hypotheses": [
            {"text": c.text, "pieces": c.pieces, "score": pytest.approx(c.score, rel=1e-4, abs=1e-5)}
            for c in translation.hypotheses
        ],
    }


def comparable(translation: dict[str, Any]) -> dict[str, Any]:
    """An API translation without what `expected` leaves out (log_prob, attention)."""
    return {
        "source": translation["source"],
        "source_pieces": translation["source_pieces"],
        "hypotheses": [{key: h[key] for key in ("text", "pieces", "score")} for h in translation["hypotheses"]],
    }


# --- translate ----------------------------------------------------------------------------------------------


def test_translate_one_sentence_equals_the_translator(server, translator, corpus):
    sources, references = corpus
    result = server.translate(text=sources[0])
    assert len(result["translations"]) == 1
    (translation,) = result["translations"]
    assert comparable(translation) == expected(translator.translate([sources[0]])[0])
    assert translation["hypotheses"][0]["text"] == references[0]  # the toy model memorised it
    assert "attention" not in translation["hypotheses"][0]
    hypothesis = translation["hypotheses"][0]
    assert hypothesis["log_prob"] <= 0 and hypothesis["score"] <= 0
    assert result["decode"] == dataclasses.asdict(translator.options)


def test_translate_a_list_with_an_empty_sentence(server, translator, corpus):
    lines = [corpus[0][1], "", corpus[0][2], toy_sentence(8, seed=3)]
    translations = server.translate(text=lines)["translations"]
    assert [comparable(t) for t in translations] == [expected(t) for t in translator.translate(lines)]
    empty = translations[1]
    assert empty["source"] == "" and empty["source_pieces"] == []
    assert [(h["text"], h["pieces"]) for h in empty["hypotheses"]] == [("", [])]


def test_attention_has_one_row_per_output_piece_and_one_column_per_source_piece(server, translator, corpus):
    lines = [corpus[0][3], toy_sentence(7, seed=5), ""]
    translations = server.translate(text=lines, attention=True, n_best=2)["translations"]
    direct = translator.translate(lines, n_best=2)
    assert [len(t["hypotheses"]) for t in translations] == [2, 2, 1]  # an empty line has one empty candidate
    for translation, own in zip(translations, direct):
        for hypothesis, candidate in zip(translation["hypotheses"], own.hypotheses):
            matrix = hypothesis["attention"]
            assert len(matrix) == len(hypothesis["pieces"])
            assert all(len(row) == len(translation["source_pieces"]) for row in matrix)
            assert all(0 <= w <= 1 for row in matrix for w in row)
            # the end-of-sentence column is left out, so a row sums to at most 1
            assert all(sum(row) <= 1 + 1e-3 for row in matrix)
            assert matrix == [pytest.approx(row, abs=2e-4) for row in candidate.attention.tolist()]
    assert translations[2]["hypotheses"][0]["attention"] == []


def test_n_best_gives_n_hypotheses_best_first(server, translator, corpus):
    line = corpus[0][4]
    (translation,) = server.translate(text=line, n_best=4)["translations"]
    hypotheses = translation["hypotheses"]
    assert len(hypotheses) == 4
    scores = [h["score"] for h in hypotheses]
    assert scores == sorted(scores, reverse=True)
    assert len({h["text"] for h in hypotheses}) == 4
    assert comparable(translation) == expected(translator.translate([line], n_best=4)[0])


def test_sampling_with_a_seed_is_reproducible(server, translator, corpus):
    lines = [corpus[0][5], toy_sentence(6, seed=9)]
    body = {"text": lines, "sample": True, "n_best": 4, "seed": 11, "temperature": 1.5}
    first = server.translate(**body)
    assert first == server.translate(**body)
    assert first["decode"]["sample"] is True and first["decode"]["seed"] == 11
    direct = translator.translate(lines, sample=True, n_best=4, seed=11, temperature=1.5)
    assert [[h["text"] for h in t["hypotheses"]] for t in first["translations"]] == [
        [c.text for c in t.hypotheses] for t in direct
    ]


def test_decoding_options_are_applied(server, translator, corpus):
    lines = [corpus[0][6], toy_sentence(9, seed=2)]
    greedy = server.translate(text=lines, beam=1)
    assert greedy["decode"]["beam"] == 1
    assert [comparable(t) for t in greedy["translations"]] == [expected(t) for t in translator.translate(lines, beam=1)]
    tuned = server.translate(text=lines, beam=3, alpha=0.0, coverage_penalty=0.2, max_output_ratio=3.0)
    assert {k: tuned["decode"][k] for k in ("beam", "alpha", "coverage_penalty", "max_output_ratio")} == {
        "beam": 3,
        "alpha": 0.0,
        "coverage_penalty": 0.2,
        "max_output_ratio": 3.0,
    }
    direct = translator.translate(lines, beam=3, alpha=0.0, coverage_penalty=0.2, max_output_ratio=3.0)
    assert [comparable(t) for t in tuned["translations"]] == [expected(t) for t in direct]
    assert server.translate(text=lines[0])["decode"]["beam"] == translator.options.beam  # not remembered


@pytest.mark.parametrize(
    ("body", "where"), [(b'{"text": "uno \\ud800"}', "text"), (b'{"text": ["uno", "\\udfff"]}', "text[1]")]
)
def test_a_lone_surrogate_is_a_422_naming_the_sentence(server, body, where):
    response = server.client.post("/v1/translate", content=body, headers=JSON)
    assert detail(response, 422).startswith(f"{where}: character ")
    assert "is a lone surrogate" in response.json()["detail"]
    scored = server.client.post("/v1/score", content=b'{"source": "uno", "target": "\\ud800"}', headers=JSON)
    assert detail(scored, 422) == "target: character 1 is a lone surrogate (U+D800), not text"


def test_attention_for_too_many_matrices_is_a_413_naming_the_limit(translator):
    with serving(translator, ServeLimits(max_attention_matrices=6)) as running:
        ok = running.client.post("/v1/translate", json={"text": ["uno", "dos"], "n_best": 3, "attention": True})
        assert ok.status_code == 200 and len(ok.json()["translations"][1]["hypotheses"][2]["attention"]) > 0
        refused = running.client.post("/v1/translate", json={"text": ["uno", "dos"], "n_best": 4, "attention": True})
        assert detail(refused, 413) == (
            "attention for 2 sentences x 4 hypotheses is 8 matrices; this server gives at most 6 per request "
            "(seq2seq serve --max-attention-matrices)"
        )
        without = running.client.post("/v1/translate", json={"text": ["uno", "dos"], "n_best": 4})
        assert without.status_code == 200  # the limit is on attention only


def test_nul_bytes_and_a_byte_order_mark_inside_the_text_translate(server, translator):
    lines = ["uno\x00dos tres", "\ufeffcuatro gato", "perro\ufeff\x00"]
    translations = server.translate(text=lines)["translations"]
    assert [t["source"] for t in translations] == lines
    assert [comparable(t) for t in translations] == [expected(t) for t in translator.translate(lines)]


# --- score ------------------------------------------------------------------------------------------------


def test_score_equals_the_translator(server, translator, corpus):
    sources, references = corpus
    pairs = [(sources[0], references[0]), (sources[1], "one two three"), ("", "one"), (sources[2], "")]
    response = server.client.post("/v1/score", json={"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    direct = translator.score([s for s, _ in pairs], [t for _, t in pairs])
    assert scores[2] is None and direct[2] is None  # an empty source
    for score, own in zip(scores[:2] + scores[3:], direct[:2] + direct[3:]):
        assert score == {
            "log_prob": pytest.approx(own.log_prob, rel=1e-5),
            "per_piece": pytest.approx(own.per_piece, rel=1e-5),
        }
    assert scores[0]["log_prob"] > scores[1]["log_prob"]  # the memorised translation is the likelier


def test_score_per_piece_adds_the_pieces(server, translator, corpus):
    source, reference = corpus[0][3], corpus[1][3]
    response = server.client.post("/v1/score", json={"source": source, "target": reference, "per_piece": True})
    assert response.status_code == 200, response.text
    (score,) = response.json()["scores"]
    (own,) = translator.score([source], [reference])
    assert score["pieces"] == own.pieces and score["pieces"][-1] == "</s>"
    assert score["piece_log_probs"] == pytest.approx(own.piece_log_probs, rel=1e-5)
    assert sum(score["piece_log_probs"]) == pytest.approx(score["log_prob"], rel=1e-4)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"source": ["uno", "dos"], "target": ["one"]}, "2 sources but 1 targets: give one target per source"),
        ({"source": "uno", "target": ["one", "two"]}, "1 sources but 2 targets: give one target per source"),
    ],
)
def test_score_with_mismatched_lengths_is_a_422(server, body, message):
    assert detail(server.client.post("/v1/score", json=body), 422) == message


def test_score_field_mistakes_name_the_field(server):
    assert detail(server.client.post("/v1/score", json={"source": "uno"}), 422).startswith("field 'target'")
    assert detail(server.client.post("/v1/score", json={"source": [], "target": []}), 422) == (
        "source: give at least one sentence"
    )
    wrong = server.client.post("/v1/score", json={"source": "uno", "target": "one", "per_piece": "yes"})
    assert detail(wrong, 422).startswith("field 'per_piece'")


# --- health and the model card --------------------------------------------------------------------------------


def test_health(server):
    health = server.health()
    assert health["status"] == "ok" and health["decoding"] is False and health["queued"] == 0
    assert health["uptime_s"] >= 0
    for key in ("requests", "items", "batches", "dropped", "failed"):
        assert isinstance(health[key], int) and health[key] >= 0
    assert "started" not in health


def test_model_card(server, translator, toy_model):
    response = server.client.get("/v1/model")
    assert response.status_code == 200
    card = response.json()
    assert card["languages"] == {"source": "es", "target": "en"}
    assert card["attention"] == {"type": toy_model["config"]["model"]["attention"]["type"]}
    assert card["vocabulary"]["source_size"] == translator.tokenizer.src_vocab_size
    assert card["vocabulary"]["target_size"] == translator.tokenizer.tgt_vocab_size
    assert card["vocabulary"]["model_type"] == "word"
    assert card["parameters"] == sum(p.numel() for p in translator.model.parameters())
    for package in ("seq2seq", "torch", "fastapi", "uvicorn", "pydantic"):
        assert card["versions"][package] == importlib.metadata.version(package), package
    assert re.fullmatch(r"\d+\.\d+\.\d+", card["versions"]["python"])
    (checkpoint,) = card["checkpoints"]
    assert checkpoint["name"] == toy_model["checkpoint"].name == "best.pt"  # a name, not the server's path
    assert "/" not in checkpoint["name"] and "\\" not in checkpoint["name"]
    assert "host" not in checkpoint["run"] and checkpoint["run"]  # the run record, less the machine's name
    assert card["ensemble"]["checkpoints"] == 1
    assert card["decode"] == dataclasses.asdict(translator.options)
    assert card["quantize"] == "none"
    assert card["limits"] == dataclasses.asdict(ServeLimits())
    assert "run_dir" not in card["training"]["train"] and "init_from" not in card["training"]["train"]
    assert set(checkpoint["run"]) <= {"versions", "train_data_sha256", "saved_at", "processes"}  # no command line
    text = json.dumps(card)
    for path in (toy_model["run_dir"], toy_model["run_dir"].parent, toy_model["src"]):
        assert str(path) not in text, path  # no path of the training machine anywhere


def test_an_ensemble_is_served_as_the_translator_decodes_it(toy_model, corpus):
    from seq2seq.translate import Translator

    steps = [toy_model["run_dir"] / "step-0000040.pt", toy_model["run_dir"] / "step-0000080.pt"]
    ensemble = Translator(steps, device="cpu", weights=[3, 1])
    with serving(ensemble) as running:
        card = running.client.get("/v1/model").json()
        found = running.client.post("/v1/translate", json={"text": corpus[0][:4], "n_best": 2})
    assert [c["name"] for c in card["checkpoints"]] == ["step-0000040.pt", "step-0000080.pt"]
    assert [c["step"] for c in card["checkpoints"]] == [40, 80]
    assert card["ensemble"] == {"checkpoints": 2, "weights": [0.75, 0.25]}
    assert found.status_code == 200, found.text
    direct = ensemble.translate(corpus[0][:4], n_best=2)
    assert [comparable(t) for t in found.json()["translations"]] == [expected(t) for t in direct]


def test_an_int8_server_decodes_as_its_translator_says_so_and_refuses_bf16(toy_model, translator, corpus):
    int8 = Translator(str(toy_model["checkpoint"]), device="cpu", quantize="int8")
    with serving(int8) as running:
        card = running.client.get("/v1/model").json()
        found = running.translate(text=corpus[0][:4], n_best=2)
        scored = running.client.post("/v1/score", json={"source": corpus[0][0], "target": corpus[1][0]})
        bf16 = running.client.post("/v1/translate", json={"text": "uno", "precision": "bf16"})
    assert card["quantize"] == "int8" and card["device"] == "cpu"
    assert card["parameters"] == sum(p.numel() for p in translator.model.parameters())  # the model's, not int8's
    assert [comparable(t) for t in found["translations"]] == [
        expected(t) for t in int8.translate(corpus[0][:4], n_best=2)
    ]
    assert [t["hypotheses"][0]["text"] for t in found["translations"]] == corpus[1][:4]  # what fp32 gives
    assert scored.json()["scores"][0]["log_prob"] == pytest.approx(int8.score(corpus[0][:1], corpus[1][:1])[0].log_prob)
    message = detail(bf16, 422)
    assert message.startswith("field 'precision' bf16 does not combine with this server's --quantize int8"), message


# --- bad input ---------------------------------------------------------------------------------------------


def test_malformed_json_is_a_400(server):
    response = server.client.post("/v1/translate", content=b'{"text": "uno"', headers=JSON)
    assert detail(response, 400).startswith("the body is not valid JSON")


def test_invalid_utf8_is_a_400(server):
    response = server.client.post("/v1/translate", content=b'{"text": "uno \xff\xfe dos"}', headers=JSON)
    assert detail(response, 400) == "the body is not UTF-8 text (byte 15 cannot start or continue a character)"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_is_a_415_naming_the_header(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = server.client.post("/v1/translate", content=b'{"text": "uno"}', headers=headers)
    assert detail(response, 415).startswith("send the body as JSON with the header Content-Type: application/json")
    assert (f"'{content_type}'" if content_type else "(got none)") in response.json()["detail"]


def test_a_leading_byte_order_mark_is_accepted(server, translator):
    body = json.dumps({"text": "uno dos"}).encode()
    response = server.client.post("/v1/translate", content=b"\xef\xbb\xbf" + body, headers=JSON)
    assert response.status_code == 200, response.text
    assert comparable(response.json()["translations"][0]) == expected(translator.translate(["uno dos"])[0])


@pytest.mark.parametrize("body", [b'["uno"]', b'"uno"', b"5", b"null", b"[]"])
def test_a_body_that_is_no_object_is_a_422(server, body):
    text = detail(server.client.post("/v1/translate", content=body, headers=JSON), 422)
    assert text.startswith("the body: ") and text.endswith("(send a JSON object)")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "uno", "beam": "5"}, "beam"),
        ({"text": "uno", "beam": True}, "beam"),
        ({"text": "uno", "beam": 2.5}, "beam"),
        ({"text": 5}, "text"),
        ({"text": None}, "text"),
        ({"text": [1]}, "text.0"),
        ({"text": ["uno", "dos", {"a": 1}]}, "text.2"),
        ({"text": "uno", "sample": "true"}, "sample"),
        ({"text": "uno", "attention": 1}, "attention"),
        ({"text": "uno", "temperature": "1.0"}, "temperature"),
        ({"text": "uno", "precision": "fp16"}, "precision"),
        ({"beam": 2}, "text"),
    ],
)
def test_a_wrong_type_is_a_422_naming_the_field(server, body, field):
    text = detail(server.client.post("/v1/translate", json=body), 422)
    assert text.startswith(f"field '{field}': "), text


def test_bf16_on_a_cpu_without_it_is_a_422_naming_the_field(server, monkeypatch):
    from seq2seq import device

    monkeypatch.setattr(device, "native_bf16", lambda: False)  # as on an AVX2-only CPU
    text = detail(server.client.post("/v1/translate", json={"text": "uno", "precision": "bf16"}), 422)
    assert text.startswith("field 'precision' bf16 needs a CPU with native bf16"), text
    assert server.translate(text="uno", precision="fp32")["translations"]


def test_an_unknown_field_is_a_422_naming_it(server):
    response = server.client.post("/v1/translate", json={"text": "uno", "beam_size": 3})
    assert detail(response, 422) == "unknown field 'beam_size'; see GET /openapi.json for the fields"
    response = server.client.post("/v1/score", json={"source": "uno", "target": "one", "attention": True})
    assert detail(response, 422).startswith("unknown field 'attention'")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"text": "uno", "beam": 0}', "field 'beam' must be greater than 0, got 0"),
        (b'{"text": "uno", "n_best": -1}', "field 'n_best' must be greater than 0, got -1"),
        (b'{"text": "uno", "temperature": NaN}', "field 'temperature' must be a finite number, got nan"),
        (b'{"text": "uno", "alpha": Infinity}', "field 'alpha' must be a finite number, got inf"),
        (b'{"text": "uno", "top_p": 2}', "field 'top_p' must be in (0, 1], got 2.0"),
        (b'{"text": "uno", "temperature": 0}', "field 'temperature' must be greater than 0, got 0.0"),
        (b'{"text": "uno", "seed": -3}', "field 'seed' must be 0 or more, got -3"),
        (b'{"text": []}', "text: give at least one sentence"),
    ],
)
def test_an_impossible_value_is_a_422_naming_the_field(server, body, message):
    assert detail(server.client.post("/v1/translate", content=body, headers=JSON), 422) == message


def test_options_beyond_the_servers_limits_are_a_422_naming_the_flag(server, small):
    assert detail(server.client.post("/v1/translate", json={"text": "uno", "beam": 17}), 422) == (
        "field 'beam': 17 is more than this server allows (16; --max-beam)"
    )
    assert detail(small.client.post("/v1/translate", json={"text": "uno", "n_best": 6}), 422) == (
        "field 'n_best': 6 is more than this server allows (5; --max-beam)"
    )
    assert detail(small.client.post("/v1/translate", json={"text": "uno", "max_output_ratio": 2.5}), 422) == (
        "field 'max_output_ratio': 2.5 is more than this server allows (2.0; --max-request-output-ratio)"
    )
    assert small.client.post("/v1/translate", json={"text": "uno", "beam": 5, "n_best": 5}).status_code == 200


@pytest.mark.parametrize(
    ("limits", "flag"),
    [
        (ServeLimits(max_beam=4), "--max-beam 4"),
        (ServeLimits(max_request_output_ratio=1.0), "--max-request-output-ratio 1.0"),
    ],
)
def test_a_server_whose_own_options_exceed_its_limits_does_not_start(translator, limits, flag):
    """`seq2seq serve --max-beam 4` over a checkpoint that decodes with beam 5 would answer every request that
    sets no beam with a 422 about a field the client never sent: it refuses to start instead, naming both."""
    from seq2seq.errors import UserError

    assert translator.options.beam == 5 and translator.options.max_output_ratio == 1.5
    with pytest.raises(UserError, match=f"is more than {flag}: lower the one or raise the other"):
        create_app(translator, limits)


def test_too_many_sentences_is_a_413_naming_the_limit(small):
    response = small.client.post("/v1/translate", json={"text": ["uno"] * 4})
    assert detail(response, 413) == (
        "text: 4 sentences; this server takes at most 3 per request (seq2seq serve --max-sentences)"
    )
    response = small.client.post("/v1/score", json={"source": ["uno"] * 4, "target": ["one"] * 4})
    assert detail(response, 413).startswith("source: 4 sentences;")
    assert small.client.post("/v1/translate", json={"text": ["uno"] * 3}).status_code == 200


def test_too_long_a_sentence_is_a_413_naming_the_limit(small):
    response = small.client.post("/v1/translate", json={"text": ["uno", "d" * 41]})
    assert detail(response, 413) == (
        "text[1]: 41 characters; this server takes at most 40 per sentence (seq2seq serve --max-chars)"
    )
    assert detail(small.client.post("/v1/translate", json={"text": "d" * 41}), 413).startswith("text: 41 characters")
    response = small.client.post("/v1/score", json={"source": "uno", "target": "o" * 50})
    assert detail(response, 413).startswith("target: 50 characters")
    assert small.client.post("/v1/translate", json={"text": "d" * 40}).status_code == 200


BODY_TOO_LARGE = "the body is larger than this server takes (500 bytes; seq2seq serve --max-body-bytes)"


def test_too_large_a_body_is_a_413_naming_the_limit(small):
    body = json.dumps({"text": "uno", "padding": " " * 600}).encode()  # too large before it is even parsed
    response = small.client.post("/v1/translate", content=body, headers=JSON)
    assert "content-length" in response.request.headers
    assert detail(response, 413) == BODY_TOO_LARGE


def test_too_large_a_chunked_body_is_a_413_naming_the_limit(small):
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what arrives
        yield b'{"text": "uno", '
        yield b'"padding": "' + b" " * 600 + b'"}'

    response = small.client.post("/v1/translate", content=chunks(), headers=JSON)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert detail(response, 413) == BODY_TOO_LARGE
    small_chunks = iter([b'{"text": ', b'"uno dos"}'])
    assert small.client.post("/v1/translate", content=small_chunks, headers=JSON).status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body(small):
    status, body = raw_request(small.url, post_bytes("/v1/translate", b'{"text": "uno"}', length=10_000))
    assert status == 413 and json.loads(body)["detail"] == BODY_TOO_LARGE


@pytest.mark.parametrize(
    "options",
    [
        {"alpha": 1e308},  # a length penalty ((5 + length) / 6) ** alpha that overflows a float
        {"alpha": 1e4},
        {"coverage_penalty": 1e308},
        {"sample": True, "temperature": 1e308},
        {"sample": True, "temperature": 1e-300},
        {"sample": True, "top_p": 1e-300},
        {"sample": True, "top_k": 2**70},
        {"sample": True, "seed": 2**70},
        {"max_output_ratio": 1e-300},
    ],
)
def test_extreme_but_valid_numbers_never_give_a_500(server, options):
    body = {"text": ["uno dos tres cuatro", "gato"]} | options
    response = httpx.post(f"{server.url}/v1/translate", json=body, timeout=120)  # its own connection
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        detail(response, 422)


# --- the API key ---------------------------------------------------------------------------------------------

KEY = "s3cret-key"
REQUESTS = [
    ("POST", "/v1/translate", {"text": "uno"}),
    ("POST", "/v1/score", {"source": "uno", "target": "one"}),
    ("GET", "/v1/health", None),
    ("GET", "/v1/model", None),
]


@pytest.fixture(scope="module")
def keyed(translator) -> Iterator[Server]:
    with serving(translator, api_key=KEY) as running:
        yield running


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=[path for _, path, _ in REQUESTS])
def test_the_api_key_guards_every_v1_endpoint(keyed, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = keyed.client.request(method, path, json=body, headers=headers)
        assert detail(response, 401) == "give the server's key: Authorization: Bearer KEY", headers
        assert response.headers["www-authenticate"] == "Bearer"
    response = keyed.client.request(method, path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text


def test_the_page_and_its_files_need_no_key(keyed):
    for path in ("/", "/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
        assert keyed.client.get(path).status_code == 200, path


def test_the_scheme_is_case_insensitive_and_an_empty_key_is_refused(keyed, translator):
    from seq2seq.errors import UserError

    for scheme in ("bearer", "BEARER", "Bearer"):
        assert keyed.client.get("/v1/health", headers={"Authorization": f"{scheme} {KEY}"}).status_code == 200
    with pytest.raises(UserError, match="the API key is empty"):
        create_app(translator, api_key=" ")


def test_a_local_server_answers_only_to_its_own_names(translator):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    app = create_app(translator, allowed_hosts=["127.0.0.1", "localhost"])
    with serving_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/health").status_code == 200
        assert client.get("/v1/health", headers={"Host": "localhost:8000"}).status_code == 200
        for path in ("/v1/health", "/", "/static/app.js"):
            assert client.get(path, headers={"Host": "evil.example"}).status_code == 400, path
        refused = client.post("/v1/translate", json={"text": "uno"}, headers={"Host": "evil.example:8000"})
        assert refused.status_code == 400


def test_no_key_configured_means_none_needed(server):
    assert server.client.get("/v1/health", headers={"Authorization": "Bearer anything"}).status_code == 200


# --- the web page ----------------------------------------------------------------------------------------------


def test_the_page_loads_only_local_files(server):
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]*)"', page.text)
    styles = re.findall(r'<link[^>]*rel="stylesheet"[^>]*href="([^"]*)"', page.text)
    assert scripts and styles
    assert all(url.startswith("/static/") for url in scripts + styles), scripts + styles
    for url in scripts + styles:
        assert server.client.get(url).status_code == 200, url
    for name in WEB_FILES:
        response = server.client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert "http://" not in response.text and "https://" not in response.text, name  # nothing from a CDN
    for path in ("/", "/docs"):
        text = server.client.get(path).text
        assert "http://" not in text and "https://" not in text, path


def test_docs_and_openapi(server):
    docs = server.client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "/static/docs.js" in docs.text
    spec = server.client.get("/openapi.json")
    assert spec.status_code == 200
    assert set(spec.json()["paths"]) == set(V1)
    translate = spec.json()["paths"]["/v1/translate"]["post"]
    assert "requestBody" in translate


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/../../seq2seq/server.py",
        "/static/%2e%2e%2fserver.py",
        "/static//etc/passwd",
        "/server.py",
    ],
)
def test_a_path_outside_the_web_files_leaks_nothing(server, path):
    status, body = raw_request(server.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status in (400, 404), (status, body[:200])
    assert b"def create_app" not in body and b"root:" not in body


# --- batching under concurrency ------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(translator, corpus):
    lines = corpus[0][:16]
    alone = [translator.translate([line])[0] for line in lines]

    async def together(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/translate", json={"text": line}) for line in lines))

    with serving(translator, ServeLimits(max_wait_ms=50)) as running:
        responses = asyncio.run(together(running.url))
        health = running.health()
    assert [r.status_code for r in responses] == [200] * 16
    assert [comparable(r.json()["translations"][0]) for r in responses] == [expected(t) for t in alone]
    assert health["requests"] == 16 and health["items"] == 16
    assert 1 <= health["batches"] < 16  # gathered into fewer batches than requests


def test_requests_with_other_options_are_not_mixed_up(translator, corpus):
    lines = corpus[0][:6]
    bodies = [{"text": line, "beam": 1 + i % 3, "n_best": 1 + i % 2} for i, line in enumerate(lines)]

    async def together(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/translate", json=body) for body in bodies))

    with serving(translator, ServeLimits(max_wait_ms=50)) as running:
        responses = asyncio.run(together(running.url))
    for body, response in zip(bodies, responses):
        assert response.status_code == 200, response.text
        own = translator.translate([body["text"]], beam=body["beam"], n_best=body["n_best"])[0]
        assert comparable(response.json()["translations"][0]) == expected(own)
        decode = response.json()["decode"]
        assert (decode["beam"], decode["n_best"]) == (body["beam"], body["n_best"])


# --- health while decoding, and clients that go away ---------------------------------------------------------------


@pytest.mark.slow
def test_health_answers_while_a_long_request_decodes(translator):
    lines = [toy_sentence(40, seed=i) for i in range(64)]
    with serving(translator) as running:
        outcome: dict[str, Any] = {}

        def long_request() -> None:
            with httpx.Client(base_url=running.url, timeout=300) as client:
                outcome["response"] = client.post("/v1/translate", json={"text": lines, "beam": 16})

        worker = threading.Thread(target=long_request)
        worker.start()
        try:
            wait_until(lambda: running.health()["decoding"], "the long request decodes")
            answered = running.client.get("/v1/health")
            still_decoding = worker.is_alive()
            assert answered.status_code == 200 and answered.json()["decoding"] is True
            assert still_decoding, "the long request ended before health answered: make it longer"
        finally:
            worker.join(300)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["translations"]) == 64


class Gated:
    """The real translator, whose translate() waits (in the server's worker thread) until `gate` is set: it holds the
    worker deterministically. Records the sentences of every call."""

    def __init__(self, translator: Translator):
        self._translator = translator
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._translator, name)

    def translate(self, lines, progress=None, **options):
        self.calls.append(list(lines))
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return self._translator.translate(lines, progress, **options)


def test_a_client_that_went_away_before_its_batch_is_dropped(translator):
    gated = Gated(translator)
    with serving(gated) as running:
        outcome: dict[str, Any] = {}

        def blocker() -> None:
            with httpx.Client(base_url=running.url, timeout=120) as client:
                outcome["response"] = client.post("/v1/translate", json={"text": "uno dos"})

        worker = threading.Thread(target=blocker)
        worker.start()
        try:
            wait_until(lambda: running.health()["decoding"], "the first request holds the worker")
            before = running.health()
            # a second request queues behind it, and its client goes away
            parts = urlsplit(running.url)
            with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
                sock.sendall(post_bytes("/v1/translate", json.dumps({"text": "gato perro"}).encode()))
                wait_until(lambda: running.health()["queued"] == 1, "the second request is queued")
            # the server sees the disconnect and cancels the waiting job (its queue is the only place that shows it)
            batcher = running.app.state.batcher
            wait_until(
                lambda: bool(batcher._waiting) and all(job.future.cancelled() for job in batcher._waiting),
                "the job is cancelled",
            )
        finally:
            gated.gate.set()
            worker.join(120)
        assert outcome["response"].status_code == 200
        wait_until(lambda: running.health()["dropped"] == before["dropped"] + 1, "the job is dropped")
        health = running.health()
        assert health["queued"] == 0 and health["failed"] == 0
        assert gated.calls == [["uno dos"]]  # the dropped request never reached the model
        again = running.translate(text="gato perro")
        assert again["translations"][0]["hypotheses"][0]["text"] == translator.translate(["gato perro"])[0].best.text
        assert gated.calls == [["uno dos"], ["gato perro"]]


def test_a_full_queue_is_a_503_with_retry_after(translator):
    gated = Gated(translator)
    with serving(gated, ServeLimits(max_queued=1)) as running:
        answers: dict[str, httpx.Response] = {}

        def post(name: str) -> None:
            with httpx.Client(base_url=running.url, timeout=120) as client:
                answers[name] = client.post("/v1/translate", json={"text": name})

        threads = [threading.Thread(target=post, args=(name,)) for name in ("uno", "dos")]
        threads[0].start()
        wait_until(lambda: running.health()["decoding"], "the first request holds the worker")
        threads[1].start()
        wait_until(lambda: running.health()["queued"] == 1, "the second request waits")
        try:
            refused = running.client.post("/v1/translate", json={"text": "tres"})
            assert detail(refused, 503).startswith("1 requests are waiting, the most this server queues")
            assert refused.headers["retry-after"] == "1"
        finally:
            gated.gate.set()
            for thread in threads:
                thread.join(120)
        assert answers["uno"].status_code == answers["dos"].status_code == 200
        assert running.client.post("/v1/translate", json={"text": "tres"}).status_code == 200  # room again


def test_clients_that_close_the_connection_leave_the_server_working(translator, corpus):
    big = json.dumps({"text": [toy_sentence(300, seed=i)[:1900] for i in range(64)]}).encode()
    assert len(big) > 100_000
    moderate = json.dumps({"text": [toy_sentence(20, seed=i) for i in range(64)]}).encode()
    with serving(translator) as running:
        parts = urlsplit(running.url)
        # half of a big body, then gone
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(post_bytes("/v1/translate", big[: len(big) // 2], length=len(big)))
        # a whole body of many sentences, then gone at once
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(post_bytes("/v1/translate", moderate))
        # the headers only
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(post_bytes("/v1/translate", b"", length=len(big)))
        line = corpus[0][7]
        result = running.translate(text=[line, "gato"])
        assert [comparable(t) for t in result["translations"]] == [
            expected(t) for t in translator.translate([line, "gato"])
        ]
        wait_until(lambda: running.health()["queued"] == 0 and not running.health()["decoding"], "the server is idle")
        health = running.health()
        assert health["status"] == "ok" and health["failed"] == 0
        assert running.client.post("/v1/score", json={"source": line, "target": corpus[1][7]}).status_code == 200


# --- no request gives a 500 -------------------------------------------------------------------------------------------


def random_value(rng: random.Random) -> Any:
    """A JSON value of a random type, ordinary or extreme."""
    return rng.choice(
        [
            lambda: rng.randint(-3, 20),
            lambda: rng.choice([0, 1, 2, 2**40, -(2**40)]),
            lambda: round(rng.uniform(-2, 5), 3),
            lambda: rng.choice([0.0, 1e-9, 1e9, -0.0, 0.5]),
            lambda: rng.choice([True, False]),
            lambda: None,
            lambda: rng.choice(["", "5", "uno dos", "fp32", "bf16", "\x00", "\ufeff", "\ud800", "uno \udfff"]),
            lambda: "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 8))),  # any code point
            lambda: [rng.choice(["uno", "", 3, None])],
            lambda: {"beam": 2},
        ]
    )()


PLAUSIBLE = {  # values each field takes, so that the fuzz also reaches the model
    "beam": [1, 2, 3, 5, 8],
    "alpha": [0.0, 0.6, 1, 2.5],
    "coverage_penalty": [0.0, 0.2, 1],
    "max_output_ratio": [0.5, 1.5, 3],
    "n_best": [1, 2, 4],
    "sample": [True, False],
    "temperature": [0.5, 1, 2.0],
    "top_k": [0, 1, 5],
    "top_p": [0.3, 0.9, 1],
    "seed": [0, 1, 99],
    "precision": ["fp32", "bf16"],
    "attention": [True, False],
    "per_piece": [True, False],
}


def random_field(rng: random.Random, name: str) -> Any:
    """A plausible value of the field most of the time, a value of a random type otherwise."""
    return rng.choice(PLAUSIBLE[name]) if rng.random() < 0.6 else random_value(rng)


def random_translate_body(rng: random.Random) -> Any:
    if rng.random() < 0.08:
        return random_value(rng)  # not an object
    body: dict[str, Any] = {}
    text = rng.random()
    if text < 0.5:
        body["text"] = rng.choice(["uno dos tres", "gato", "", "rojo azul verde grande"])
    elif text < 0.8:
        body["text"] = [rng.choice(["uno dos", "", "siete ocho", "casa"]) for _ in range(rng.randint(0, 4))]
    elif text < 0.95:
        body["text"] = random_value(rng)
    for name in (*DECODE_FIELDS, "attention"):
        if rng.random() < 0.2:
            body[name] = random_field(rng, name)
    if rng.random() < 0.08:
        body[rng.choice(["beam_size", "nbest", "source"])] = random_value(rng)
    return body


def random_score_body(rng: random.Random) -> Any:
    if rng.random() < 0.08:
        return random_value(rng)
    sentences = ["uno dos", "", "gato", "one two", "cat"]
    body: dict[str, Any] = {}
    for name in ("source", "target"):
        kind = rng.random()
        if kind < 0.45:
            body[name] = rng.choice(sentences)
        elif kind < 0.85:
            body[name] = [rng.choice(sentences) for _ in range(rng.randint(0, 3))]
        elif kind < 0.95:
            body[name] = random_value(rng)
    if rng.random() < 0.3:
        body["per_piece"] = random_field(rng, "per_piece")
    return body


def test_no_request_gives_a_500(server):
    rng = random.Random(0)
    statuses = []
    for _ in range(80):
        path = "/v1/translate" if rng.random() < 0.75 else "/v1/score"
        body = random_translate_body(rng) if path == "/v1/translate" else random_score_body(rng)
        response = server.client.post(path, content=json.dumps(body).encode(), headers=JSON)
        statuses.append(response.status_code)
        assert response.status_code in (200, 400, 413, 422), (path, body, response.text)
        if response.status_code != 200:
            detail(response, response.status_code)
    assert statuses.count(200) >= 10 and statuses.count(422) >= 10, statuses  # the fuzz reaches both
