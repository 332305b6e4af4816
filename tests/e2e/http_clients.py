#!/usr/bin/env python3
"""Real HTTP clients for tests/e2e_suite/http.rs. Each prints its results as TOML
(toml_out.py: the Rust side has no JSON parser): one [[results]] table per
page fetched.

  http_clients.py requests BASE USER PASSWORD PATH... [--rounds N] [--agent UA]
      one python3-requests Session with HTTPDigestAuth fetches every PATH, N
      rounds (default 1). Per fetch: path, status, body, challenges (the 401s
      requests saw: response.history plus a final 401) and requests (how
      many it sent), authorization (the Digest header of its last request),
      rspauth (for a 200: "ok" when Authentication-Info's rspauth equals the
      one recomputed here from PASSWORD, "bad", or "missing"), nextnonce
      (whether Authentication-Info carried one); top level: challenges =
      the total.

  http_clients.py chromium CHROMIUM BASE USER PASSWORD USER_AGENT PATH...
      headless Chromium opens every PATH in turn in one tab and answers the
      HTTP auth challenges itself through the DevTools protocol
      (Fetch.enable handleAuthRequests, Fetch.authRequired ->
      Fetch.continueWithAuth ProvideCredentials), spoken over
      --remote-debugging-pipe: the standard library is enough, no driver.
      Per page: path, status (of the document; absent if it failed), error
      (Chromium's net error, if any), body (document.body.innerText) and
      auth_prompts (how often Chromium asked for credentials). Chromium
      retries a stale=true nonce without asking: the Rust side counts the
      401s in nginx's access log by USER_AGENT.
"""
import fcntl
import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time

import toml_out


def requests_mode(base, user, password, paths, rounds, agent):
    import requests
    from requests.auth import HTTPDigestAuth

    session = requests.Session()
    session.auth = HTTPDigestAuth(user, password)
    if agent:
        session.headers["User-Agent"] = agent
    results, total = [], 0
    for _ in range(rounds):
        for path in paths:
            r = session.get(base + path, timeout=10)
            seen = [h.status_code for h in r.history] + [r.status_code]
            challenges = seen.count(401)
            total += challenges
            sent = r.request.headers.get("Authorization", "")
            info = r.headers.get("Authentication-Info")
            rspauth = None
            if r.status_code == 200 and sent.startswith("Digest "):
                rspauth = check_rspauth(sent, info, password)
            results.append({"path": path, "status": r.status_code,
                            "body": r.text, "challenges": challenges,
                            "requests": len(seen), "authorization": sent,
                            "rspauth": rspauth,
                            "nextnonce": bool(info and "nextnonce=" in info)})
    emit({"challenges": total}, results)


def digest_params(h):
    """The auth-params of a Digest header (quoted strings unescaped)."""
    out, i = {}, 0
    while i < len(h):
        while i < len(h) and h[i] in " ,":
            i += 1
        j = h.index("=", i)
        name = h[i:j].strip().lower()
        i = j + 1
        if h[i:i + 1] == '"':
            i += 1
            v = ""
            while h[i] != '"':
                if h[i] == "\\":
                    i += 1
                v += h[i]
                i += 1
            i += 1
        else:
            j = i
            while i < len(h) and h[i] != ",":
                i += 1
            v = h[j:i].strip()
        out[name] = v
    return out


def check_rspauth(sent, info, password):
    """RFC 7616 §3.5, computed here independently of the daemon: rspauth =
    H(HA1:nonce:nc:cnonce:auth:H(":" uri)), HA1 as for the request."""
    if not info:
        return "missing"
    a = digest_params(sent[len("Digest "):])
    got = digest_params(info)
    alg = a.get("algorithm", "MD5").upper()
    hf = hashlib.sha256 if alg.startswith("SHA-256") else hashlib.md5
    H = lambda s: hf(s.encode()).hexdigest()
    ha1 = H(f"{a['username']}:{a['realm']}:{password}")
    if alg.endswith("-SESS"):
        ha1 = H(f"{ha1}:{a['nonce']}:{a['cnonce']}")
    want = H(f"{ha1}:{a['nonce']}:{a['nc']}:{a['cnonce']}:auth:{H(':' + a['uri'])}")
    echoed = got.get("nc") == a["nc"] and got.get("cnonce") == a["cnonce"] \
        and got.get("qop") == "auth"
    return "ok" if got.get("rspauth") == want and echoed else "bad"


def emit(top, results):
    out = toml_out.table(top) if top else ""
    for r in results:
        out += toml_out.table(r, "results")
    sys.stdout.write(out)


class Pipe:
    """CDP over --remote-debugging-pipe: JSON messages ended by NUL; we write
    to Chromium's fd 3 and read its fd 4."""

    def __init__(self, to_browser, from_browser):
        self.w = to_browser
        self.r = from_browser
        self.buf = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("no message from Chromium in time")
            chunk = os.read(self.r, 65536)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=None, timeout=20):
        want = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)


def chromium_mode(chromium, base, user, password, agent, paths):
    profile = tempfile.mkdtemp(prefix="e2e-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    # Chromium's ends go to fds 3 and 4 in the child; first move them above
    # both, so neither dup2 can overwrite the other.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_r, from_w)]
    os.close(to_r)
    os.close(from_w)

    def child_fds():
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--no-default-browser-check",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--password-store=basic", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", f"--user-agent={agent}",
         "--remote-debugging-pipe", "about:blank"],
        preexec_fn=child_fds, pass_fds=(3, 4),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(profile, "chromium.log"), "w"))
    for fd in high:
        os.close(fd)
    cdp = Pipe(to_w, from_r)
    try:
        results = drive(cdp, base, user, password, paths)
    except Exception:
        with open(os.path.join(profile, "chromium.log")) as f:
            sys.stderr.write(f.read()[-4000:])
        raise
    finally:
        try:
            cdp.send("Browser.close")
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", profile], check=False)
    emit({}, results)


def drive(cdp, base, user, password, paths):
    # A tab of our own: the initial about:blank may not exist yet.
    page = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = cdp.call("Target.attachToTarget",
                       {"targetId": page, "flatten": True})["sessionId"]
    cdp.call("Page.enable", session=session)
    cdp.call("Network.enable", session=session)
    # Every request pauses (requestPaused: we let it go on); a 401 challenge
    # pauses as authRequired: we answer with the credentials.
    cdp.call("Fetch.enable", {"handleAuthRequests": True,
                              "patterns": [{"urlPattern": "*"}]}, session=session)
    results = []
    for path in paths:
        url = base + path
        cdp.events.clear()
        cdp.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + 20
        prompts, status, error, loaded = 0, None, None, False
        while not loaded:
            try:
                msg = cdp.events.pop(0) if cdp.events else cdp.read(deadline)
            except TimeoutError:
                error = "no load event within 20 s"
                break
            method = msg.get("method")
            p = msg.get("params", {})
            if method == "Fetch.requestPaused":
                cdp.send("Fetch.continueRequest", {"requestId": p["requestId"]},
                         session=session)
            elif method == "Fetch.authRequired":
                prompts += 1
                # A further prompt means the credentials were refused:
                # answer a few, then cancel rather than loop.
                answer = ({"response": "ProvideCredentials", "username": user,
                           "password": password} if prompts <= 3
                          else {"response": "CancelAuth"})
                cdp.send("Fetch.continueWithAuth",
                         {"requestId": p["requestId"], "authChallengeResponse": answer},
                         session=session)
            elif method == "Network.responseReceived" and p.get("type") == "Document":
                status = p["response"]["status"]
            elif method == "Network.loadingFailed" and p.get("type") == "Document":
                error = p.get("errorText", "failed")
            elif method == "Page.loadEventFired":
                loaded = True
        text = cdp.call("Runtime.evaluate",
                        {"expression": "document.body ? document.body.innerText : ''",
                         "returnByValue": True}, session=session)
        results.append({"path": path, "status": status, "error": error,
                        "body": text["result"].get("value", ""),
                        "auth_prompts": prompts})
    return results


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "requests":
        opts = {"--rounds": "1", "--agent": None}
        for flag in opts:
            if flag in args:
                i = args.index(flag)
                opts[flag] = args[i + 1]
                del args[i:i + 2]
        base, user, password, *paths = args
        requests_mode(base, user, password, paths, int(opts["--rounds"]), opts["--agent"])
    elif mode == "chromium":
        chromium, base, user, password, agent, *paths = args
        chromium_mode(chromium, base, user, password, agent, paths)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
