"""`seq2seq serve` as a user runs it: a child process that logs its address, answers, warns about a public
address, stops on Ctrl-C, and turns every mistake on its command line into one line and exit status 2."""

from __future__ import annotations

import re
import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest
from helpers import assert_subprocess_one_line_error, run_seq2seq, seq2seq_process, wait_until

pytestmark = pytest.mark.slow

SERVING = re.compile(r"serving es -> en at (http://[^/\s]+)/")


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    process, stderr = seq2seq_process(tmp_path, "serve", "serve", *args, env=env)
    wait_until(lambda: SERVING.search(stderr.read_text()), process, stderr, "the serving line", timeout=120)
    return process, stderr, SERVING.search(stderr.read_text()).group(1)


def test_serve_listens_on_a_free_port_answers_and_stops_cleanly_on_ctrl_c(tmp_path: Path, toy_model, corpus):
    process, stderr, url = _start(tmp_path, str(toy_model["checkpoint"]), "--port", "0", "--beam", "1")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(url + "/v1/health").json()["status"] == "ok"
        answer = httpx.post(url + "/v1/translate", json={"text": corpus[0][0]}).json()
        assert answer["translations"][0]["hypotheses"][0]["text"] == corpus[1][0]
        assert answer["decode"]["beam"] == 1  # the command line's --beam is the server's default
        assert "warning" not in stderr.read_text().lower()  # 127.0.0.1: no warning
    finally:
        process.send_signal(signal.SIGINT)
        status = process.wait(60)
    log = stderr.read_text()
    assert status == 0, log
    assert "Traceback" not in log
    assert '"POST /v1/translate HTTP/1.1" 200' in log  # the access log


def test_serve_on_another_address_warns_that_anyone_can_reach_it(tmp_path: Path, toy_model):
    process, stderr, url = _start(tmp_path, str(toy_model["checkpoint"]), "--host", "0.0.0.0", "--port", "0")
    try:
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200
    finally:
        process.terminate()
        process.wait(60)
    warning = [line for line in stderr.read_text().splitlines() if "any machine that can reach" in line]
    assert len(warning) == 1 and "no --api-key" in warning[0]


def test_the_api_key_from_the_environment_protects_the_api(tmp_path: Path, toy_model):
    key = {"SEQ2SEQ_API_KEY": "from-the-environment"}
    process, _, url = _start(tmp_path, str(toy_model["checkpoint"]), "--port", "0", env=key)
    try:
        assert httpx.get(url + "/v1/health").status_code == 401
        authorised = {"Authorization": "Bearer from-the-environment"}
        assert httpx.get(url + "/v1/health", headers=authorised).status_code == 200
    finally:
        process.terminate()
        process.wait(60)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max-sentences", "0"], "--max-sentences must be a positive number, got 0"),
        (["--max-chars", "-3"], "--max-chars must be a positive number"),
        (["--max-wait-ms", "nan"], "--max-wait-ms must be a positive number, got nan"),
        (["--max-request-output-ratio", "inf"], "--max-request-output-ratio must be a positive number"),
        (["--beam", "0"], "--beam"),
        (["--port", "99999"], "cannot listen on 127.0.0.1:99999"),
        (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid:8000"),
        (["--api-key", ""], "--api-key is empty (an unset variable?)"),
        (["--api-key", "two words"], "--api-key contains whitespace"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(toy_model, flags, expected):
    result = run_seq2seq("serve", str(toy_model["checkpoint"]), *flags)
    assert expected in assert_subprocess_one_line_error(result)


def test_a_missing_checkpoint_is_one_line_and_status_2(tmp_path: Path):
    result = run_seq2seq("serve", str(tmp_path / "missing.pt"))
    assert str(tmp_path / "missing.pt") in assert_subprocess_one_line_error(result)


def test_a_port_in_use_is_one_line_and_status_2(toy_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_seq2seq("serve", str(toy_model["checkpoint"]), "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in assert_subprocess_one_line_error(result)


def test_without_the_serve_extra_the_command_says_what_to_install(tmp_path: Path, toy_model):
    # a copy of the package on a path where fastapi cannot be imported: shadow it with a module that fails
    shadow = tmp_path / "shadow"
    (shadow / "fastapi").mkdir(parents=True)
    (shadow / "fastapi" / "__init__.py").write_text("raise ImportError('not installed')\n")
    shutil.copytree(Path(__file__).resolve().parents[1] / "seq2seq", shadow / "seq2seq")
    result = run_seq2seq("serve", str(toy_model["checkpoint"]), cwd=shadow)
    # find_spec finds the shadow, so the import is what fails: the message must still be one line
    assert "pip install -e '.[serve]'" in assert_subprocess_one_line_error(result)


def test_the_key_comes_from_the_flag_else_the_environment_and_an_empty_one_is_refused():
    from seq2seq.cli import _api_key
    from seq2seq.errors import UserError

    assert _api_key(None, None) is None
    assert _api_key("from-flag", "from-environment") == "from-flag"
    assert _api_key(None, "from-environment") == "from-environment"
    for flag_value, environment, message in (
        ("", None, "--api-key is empty"),
        (None, "", "SEQ2SEQ_API_KEY is empty"),
        (None, "key\n", "SEQ2SEQ_API_KEY contains whitespace"),
    ):
        with pytest.raises(UserError, match=message):
            _api_key(flag_value, environment)
