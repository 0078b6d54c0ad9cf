"""A stand-in for the ngrok agent, for tests only: the real agent cannot be
downloaded here and its cloud cannot be reached, so this script plays the
agent at the outermost boundary. pyngrok runs it exactly as it runs ngrok
(``PyngrokConfig(ngrok_path=...)``) and drives it through the same commands,
log lines and local API.

Commands: ``start --none --log stdout [--config P] [--authtoken T] [--region R]``,
``config add-authtoken T [--config P]``, ``--version``.

Environment:
- FAKE_NGROK_ERROR=ERR_NGROK_<n>: fail like the real agent (105/107 invalid
  token, 108 one session, 121 agent too old at start-up; 702 rate limit when
  a tunnel is created).
- FAKE_NGROK_LOG=path: append one JSON line per start (argv, pid) and per
  deleted tunnel, so tests can count agent processes and see disconnects.
Without an authtoken (argument, config file or NGROK_AUTHTOKEN) it fails with
ERR_NGROK_4018 like the real agent.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "3.19.0"

# The agent's own wording (abridged), ending in the error code as ngrok prints it.
ERRORS = {
    "ERR_NGROK_4018": "authentication failed: Usage of ngrok requires a verified account and authtoken.\\n\\n"
                      "Sign up for an account: https://dashboard.ngrok.com/signup\\nInstall your authtoken: "
                      "https://dashboard.ngrok.com/get-started/your-authtoken\\r\\n\\r\\nERR_NGROK_4018\\r\\n",
    "ERR_NGROK_105": "authentication failed: The authtoken you specified does not look like a proper ngrok tunnel "
                     "authtoken.\\nYour authtoken: {token}\\nInstructions to install your authtoken are on your "
                     "ngrok dashboard:\\nhttps://dashboard.ngrok.com/get-started/your-authtoken\\r\\n\\r\\n"
                     "ERR_NGROK_105\\r\\n",
    "ERR_NGROK_107": "authentication failed: The authtoken you specified is properly formed, but it is invalid.\\n"
                     "Your authtoken: {token}\\nThis usually happens when:\\n - You reset your authtoken\\n"
                     "Go to your ngrok dashboard and double check that your authtoken is correct:\\n"
                     "https://dashboard.ngrok.com/get-started/your-authtoken\\r\\n\\r\\nERR_NGROK_107\\r\\n",
    "ERR_NGROK_108": "authentication failed: Your account is limited to 1 simultaneous ngrok agent sessions.\\n"
                     "You can view your current agent sessions in the dashboard:\\n"
                     "https://dashboard.ngrok.com/agents\\r\\n\\r\\nERR_NGROK_108\\r\\n",
    "ERR_NGROK_121": "authentication failed: Your ngrok-agent version \\\"2.3.41\\\" is too old. The minimum "
                     "supported agent version for your account is \\\"3.2.0\\\". Please update to a newer version "
                     "with `ngrok update`.\\r\\n\\r\\nERR_NGROK_121\\r\\n",
    "ERR_NGROK_702": "failed to start tunnel: You have exceeded your limit on connections per minute. "
                     "This limit will reset within 1 minute.\\r\\n\\r\\nERR_NGROK_702\\r\\n",
}


def log(lvl: str, msg: str, **fields: str) -> None:
    t = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")
    extra = "".join(f' {k}="{v}"' if " " in v or "\\" in v else f" {k}={v}" for k, v in fields.items())
    print(f't={t} lvl={lvl} msg="{msg}"{extra}', flush=True)


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def config_token(path: str | None) -> str | None:
    if not path or not os.path.exists(path):
        return None
    text = open(path, encoding="utf-8").read()
    match = re.search(r"authtoken:\s*(\S+)", text)
    return match.group(1).strip("'\"") if match else None


def record(event: dict) -> None:
    if os.environ.get("FAKE_NGROK_LOG"):
        with open(os.environ["FAKE_NGROK_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


class Agent:
    def __init__(self):
        self.endpoints: dict[str, dict] = {}
        self.lock = threading.Lock()


def make_handler(agent: Agent):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep stdout for ngrok's log lines only
            pass

        def send(self, status: int, body: dict | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def collection(self) -> str | None:
            match = re.fullmatch(r"/api/(endpoints|tunnels)(?:/([^/]+))?/?", self.path.split("?")[0])
            return match

        def do_GET(self):
            match = self.collection()
            if not match:
                return self.send(404, {"error_code": 100, "status_code": 404, "msg": "not found"})
            kind, name = match.groups()
            with agent.lock:
                if name:
                    item = agent.endpoints.get(name)
                    return self.send(200, item) if item else self.send(404, {"status_code": 404, "msg": "not found"})
                return self.send(200, {kind: list(agent.endpoints.values()), "uri": f"/api/{kind}"})

        def do_POST(self):
            match = self.collection()
            if not match or match.group(2):
                return self.send(405, {"status_code": 405, "msg": "method not allowed"})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if os.environ.get("FAKE_NGROK_ERROR") == "ERR_NGROK_702":
                return self.send(502, {"error_code": 103, "status_code": 502, "msg": "failed to start tunnel",
                                       "details": {"err": ERRORS["ERR_NGROK_702"].replace("\\r\\n", "\r\n")}})
            name = body.get("name") or f"endpoint-{secrets.token_hex(4)}"
            upstream = body.get("upstream") or {"url": "http://localhost:" + str(body.get("addr", "80"))}
            item = {
                "id": "ep_" + secrets.token_hex(8),
                "name": name,
                "uri": f"/api/{match.group(1)}/{name}",
                "url": f"https://{secrets.token_hex(6)}.ngrok-free.app",
                "upstream": upstream,
                "proto": "https",
            }
            with agent.lock:
                agent.endpoints[name] = item
            log("info", "started tunnel", obj="tunnels", name=name, addr=upstream["url"], url=item["url"])
            self.send(201, item)

        def do_DELETE(self):
            match = self.collection()
            if not match or not match.group(2):
                return self.send(405, {"status_code": 405, "msg": "method not allowed"})
            with agent.lock:
                found = agent.endpoints.pop(match.group(2), None)
            if found:
                record({"deleted": match.group(2)})
            self.send(204) if found else self.send(404, {"status_code": 404, "msg": "not found"})

    return Handler


def start(args: list[str]) -> int:
    token = option(args, "--authtoken") or config_token(option(args, "--config")) or os.environ.get("NGROK_AUTHTOKEN")
    record({"pid": os.getpid(), "argv": args})
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Agent()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log("info", "no configuration paths supplied", obj="config")
    log("info", "starting web service", obj="web", addr=f"127.0.0.1:{server.server_address[1]}", allow_hosts="[]")
    error = os.environ.get("FAKE_NGROK_ERROR")
    code = "ERR_NGROK_4018" if not token else error if error in ERRORS and error != "ERR_NGROK_702" else None
    if code:
        # The real agent logs the failed session, then exits with "command failed".
        err = ERRORS[code].format(token=token or "")
        log("eror", "failed to reconnect session", obj="tunnels.session", err=err)
        log("crit", "command failed", err=err)
        return 1
    log("info", "tunnel session started", obj="tunnels.session")
    log("info", "client session established", obj="csess", id=secrets.token_hex(6))
    parent = os.getppid()
    while os.getppid() == parent:  # die with the test process, never linger
        time.sleep(0.2)
    return 0


def install(folder) -> str:
    """Write an executable ``ngrok`` in ``folder`` that runs this script with
    the current interpreter; return its path (for ``ngrok_path``)."""
    from pathlib import Path

    exe = Path(folder) / "ngrok"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("--version", "version", "-v"):
        print(f"ngrok version {VERSION}")
        return 0
    if argv[0] == "start":
        return start(argv[1:])
    if argv[:2] == ["config", "add-authtoken"] and len(argv) > 2:
        path = option(argv, "--config") or os.path.expanduser("~/.config/ngrok/ngrok.yml")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"authtoken: {argv[2]}\n")
        print(f"Authtoken saved to configuration file: {path}")
        return 0
    print(f"ERROR:  unknown command {argv!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
