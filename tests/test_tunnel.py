"""The public link, driven through pyngrok for real.

ngrok's cloud and agent cannot exist here, so pyngrok runs tests/fake_ngrok.py
as its agent (``ngrok_path``): the only stand-in, at the outermost boundary.
pyngrok itself is not patched. For the Colab fallback, ``google.colab`` (only
present inside Colab) is a stand-in module put in sys.modules.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import types

import pytest

import app.notebook.tunnel as tunnel_mod
import fake_ngrok
from app.notebook.tunnel import TunnelError, close_tunnel, open_tunnel

TOKEN = "2abcSECRETtoken_0123456789abcdefghij"
PORT = 5123


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """An executable that pyngrok starts as its ngrok agent, plus its event log."""
    exe = fake_ngrok.install(tmp_path)
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("FAKE_NGROK_LOG", str(events))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("FAKE_NGROK_ERROR", raising=False)

    class Agent:
        options = dict(ngrok_path=exe, config_path=str(tmp_path / "ngrok.yml"))

        @staticmethod
        def events() -> list[dict]:
            if not events.exists():
                return []
            return [json.loads(line) for line in events.read_text().splitlines()]

        @classmethod
        def starts(cls) -> list[dict]:
            return [e for e in cls.events() if "argv" in e]

    yield Agent
    close_tunnel()
    from pyngrok import process

    process.kill_process(exe)


@pytest.fixture
def colab(monkeypatch):
    """Stand-in for the ``google.colab`` module that exists only inside Colab."""
    secrets: dict[str, str] = {}
    js_calls: list[str] = []
    windows: list[tuple] = []

    class SecretNotFoundError(Exception):
        pass

    def get(name):
        if name not in secrets:
            raise SecretNotFoundError(name)
        return secrets[name]

    def eval_js(script):
        js_calls.append(script)
        return "https://5123-m-s-abc123-b.us-west1-0.prod.colab.dev"

    package = types.ModuleType("google.colab")
    package.userdata = types.SimpleNamespace(get=get)
    package.output = types.SimpleNamespace(
        eval_js=eval_js, serve_kernel_port_as_window=lambda port, path="/", anchor_text=None: windows.append(
            (port, path, anchor_text)))
    monkeypatch.setitem(sys.modules, "google.colab", package)
    yield types.SimpleNamespace(secrets=secrets, js_calls=js_calls, windows=windows)
    close_tunnel()


def test_connect_opens_an_ngrok_link_to_the_port(agent):
    from pyngrok import ngrok
    from pyngrok.conf import PyngrokConfig

    link = open_tunnel(PORT, authtoken=TOKEN, **agent.options)

    assert link.kind == "ngrok" and not link.reused
    assert link.public_url.startswith("https://") and link.public_url.endswith(".ngrok-free.app")
    assert len(agent.starts()) == 1
    argv = agent.starts()[0]["argv"]
    assert argv[:4] == ["--none", "--log", "stdout", "--config"]
    assert argv[argv.index("--authtoken") + 1] == TOKEN
    # The agent itself lists the tunnel, pointing at our port.
    listed = ngrok.get_tunnels(PyngrokConfig(**agent.options))
    assert [(t.public_url, t.upstream["url"]) for t in listed] == [(link.public_url, f"http://localhost:{PORT}")]
    assert TOKEN not in link.describe()


def test_token_comes_from_the_environment(agent, monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", TOKEN)
    link = open_tunnel(PORT, **agent.options)
    argv = agent.starts()[0]["argv"]
    assert link.kind == "ngrok" and argv[argv.index("--authtoken") + 1] == TOKEN


def test_rerun_reuses_the_open_tunnel_without_a_new_agent(agent):
    first = open_tunnel(PORT, authtoken=TOKEN, **agent.options)
    second = open_tunnel(PORT, authtoken=TOKEN, **agent.options)

    assert second.public_url == first.public_url
    assert second.reused
    assert len(agent.starts()) == 1
    # Another port gets its own tunnel on the same agent.
    other = open_tunnel(PORT + 1, authtoken=TOKEN, **agent.options)
    assert other.public_url != first.public_url and len(agent.starts()) == 1


def test_close_disconnects_and_stops_the_agent(agent):
    from pyngrok import process

    link = open_tunnel(PORT, authtoken=TOKEN, **agent.options)
    assert process.is_process_running(agent.options["ngrok_path"])

    assert close_tunnel() is True

    assert any("deleted" in e for e in agent.events()), "tunnel was not deleted"
    assert not process.is_process_running(agent.options["ngrok_path"])
    assert tunnel_mod.current_tunnel() is None
    assert close_tunnel() is False
    # A fresh open after closing starts a new agent and a new link.
    again = open_tunnel(PORT, authtoken=TOKEN, **agent.options)
    assert again.public_url != link.public_url and len(agent.starts()) == 2


ERROR_CASES = {
    "ERR_NGROK_105": ["rejected the authtoken", "dashboard.ngrok.com/get-started/your-authtoken"],
    "ERR_NGROK_107": ["rejected the authtoken", "NGROK_AUTHTOKEN"],
    "ERR_NGROK_108": ["one agent session", "dashboard.ngrok.com/agents", "stop cell"],
    "ERR_NGROK_121": ["too old", "pip install -U pyngrok", "delete the old agent"],
    "ERR_NGROK_702": ["rate limit", "Wait a minute"],
}


@pytest.mark.parametrize("code", sorted(ERROR_CASES))
def test_ngrok_errors_become_clear_messages_without_the_token(agent, monkeypatch, caplog, code):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FAKE_NGROK_ERROR", code)

    with pytest.raises(TunnelError) as info:
        open_tunnel(PORT, authtoken=TOKEN, **agent.options)

    message = str(info.value)
    assert info.value.code == code
    for phrase in ERROR_CASES[code]:
        assert phrase in message
    assert TOKEN not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # the pyngrok error quotes the token
    assert caplog.records, "pyngrok logged nothing: the agent was not driven"
    assert TOKEN not in caplog.text
    if code in ("ERR_NGROK_105", "ERR_NGROK_107"):
        # The agent echoes the rejected token; the logs show it masked.
        assert TOKEN[:4] + "***" in caplog.text
    assert tunnel_mod.current_tunnel() is None


def test_missing_token_says_how_to_set_one(agent):
    with pytest.raises(TunnelError) as info:
        open_tunnel(PORT, **agent.options)

    message = str(info.value)
    assert info.value.code == "ERR_NGROK_4018"
    assert "NGROK_AUTHTOKEN" in message and "Colab secret" in message
    assert "dashboard.ngrok.com/signup" in message
    assert "Colab's own port proxy" in message
    assert "--authtoken" not in agent.starts()[0]["argv"]


def test_colab_without_token_falls_back_to_the_colab_proxy(agent, colab):
    link = open_tunnel(PORT, **agent.options)

    assert link.kind == "colab"
    assert link.public_url == "https://5123-m-s-abc123-b.us-west1-0.prod.colab.dev"
    assert colab.js_calls == [f"google.colab.kernel.proxyPort({PORT})"]
    assert "only for you" in link.note and "not a link to share" in link.note
    assert "No ngrok authtoken" in link.describe()
    assert agent.starts() == []  # no ngrok agent was started
    assert open_tunnel(PORT, **agent.options).reused

    tunnel_mod.open_colab_window(PORT)  # the notebook also offers the app in a tab of its own
    assert colab.windows == [(PORT, "/", "Open the app in a new tab")]


@pytest.mark.parametrize("forwarded_proto", ["https", None])
def test_login_cookie_sticks_through_colabs_proxy(agent, colab, tmp_path, forwarded_proto):
    """Colab's proxy serves the app at the root of its own https host and reaches
    it from localhost. The login cookie must be host-only, for path /, HttpOnly,
    SameSite=Lax (first-party in the new-tab link), and Secure exactly when the
    request is known to be https (a Secure cookie on plain http would be dropped)."""
    from app import create_app
    from app.notebook.tunnel import share_app

    web_app = create_app({"MODEL": "demo", "START_WORKER": False, "PUBLIC": True, "PASSWORD": "pw",
                          "TRUST_PROXY": 1, "INSTANCE": str(tmp_path)})
    link = share_app(web_app, PORT, **agent.options)
    host = link.public_url.removeprefix("https://")
    headers = {"Origin": link.public_url, "Host": f"localhost:{PORT}"}
    if forwarded_proto:
        headers.update({"X-Forwarded-Proto": forwarded_proto, "X-Forwarded-Host": host})
    client = web_app.test_client()

    response = client.post("/login", data={"password": "pw"}, headers=headers,
                           environ_base={"REMOTE_ADDR": "127.0.0.1"})

    assert response.status_code == 302
    [cookie] = response.headers.getlist("Set-Cookie")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert "path=/" in cookie.lower() and "domain" not in flags
    assert {"httponly", "samesite"} <= flags and "samesite=lax" in cookie.lower()
    assert ("secure" in flags) == (forwarded_proto == "https")
    page = client.get("/", headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert page.status_code == 200  # logged in: no redirect to /login


def test_colab_falls_back_to_the_proxy_when_ngrok_fails(agent, colab, monkeypatch):
    colab.secrets["NGROK_AUTHTOKEN"] = TOKEN
    monkeypatch.setenv("FAKE_NGROK_ERROR", "ERR_NGROK_108")
    link = open_tunnel(PORT, **agent.options)

    assert link.kind == "colab" and len(agent.starts()) == 1
    assert "one agent session" in link.describe() and "only for you" in link.describe()
    assert TOKEN not in link.describe()
    with pytest.raises(TunnelError, match="ERR_NGROK_108"):
        open_tunnel(PORT + 1, colab_fallback=False, **agent.options)


def test_colab_secret_supplies_the_token(agent, colab):
    colab.secrets["NGROK_AUTHTOKEN"] = TOKEN
    link = open_tunnel(PORT, **agent.options)
    argv = agent.starts()[0]["argv"]
    assert link.kind == "ngrok" and argv[argv.index("--authtoken") + 1] == TOKEN
    assert colab.js_calls == []


def test_public_link_refused_for_an_app_without_password(agent):
    from flask import Flask

    app = Flask("t")
    with pytest.raises(TunnelError, match="no PASSWORD"):
        tunnel_mod.share_app(app, PORT, authtoken=TOKEN, **agent.options)
    assert agent.starts() == []
    app.config["PASSWORD"] = "pw"
    link = tunnel_mod.share_app(app, PORT, authtoken=TOKEN, **agent.options)
    assert link.kind == "ngrok" and app.config["ORIGINS"] == (link.public_url,)  # its pages may post


def test_keep_alive_reopens_a_dropped_link(agent):
    first = open_tunnel(PORT, authtoken=TOKEN, **agent.options)
    os.kill(agent.starts()[0]["pid"], signal.SIGKILL)  # the agent dies (Colab hiccup, OOM ...)
    time.sleep(0.3)
    said: list[str] = []

    checks = tunnel_mod.keep_alive(lambda: True, PORT, interval=0, max_checks=1, say=said.append,
                                   authtoken=TOKEN, **agent.options)

    assert checks == 1
    assert said[0] == "The public link dropped; reopening it..."
    new_url = tunnel_mod.current_tunnel().public_url
    assert new_url != first.public_url and new_url in said[1]
    assert len(agent.starts()) == 2
    said.clear()
    assert tunnel_mod.keep_alive(lambda: False, PORT, interval=0, say=said.append) == 1
    assert said == ["The app has stopped."]


def test_keep_alive_interrupt_is_reported_and_passed_on():
    said: list[str] = []

    def interrupted() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tunnel_mod.keep_alive(interrupted, PORT, interval=0, say=said.append)
    assert said == ["Stopped watching (the app keeps running until the stop cell)."]


def test_bad_port_is_named():
    with pytest.raises(TunnelError, match=r"port must be .* \(got 0\)"):
        open_tunnel(0)


def test_keep_alive_ticks_between_checks_for_the_job_lines():
    ticks = []
    checks = tunnel_mod.keep_alive(lambda: True, PORT, interval=0.02, tick=0.01, max_checks=2,
                                   say=lambda _line: None, on_tick=lambda: ticks.append(1))
    assert checks == 2 and len(ticks) == 3  # twice between the two checks, once after the last
