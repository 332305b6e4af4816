#!/usr/bin/env python3
"""HTTP Digest client for the end-to-end tests.

  http_digest.py urllib URL USER PASSWORD
      fetch with Python's own urllib HTTPDigestAuthHandler (MD5 only);
      prints "status <code>".
  http_digest.py requests URL USER PASSWORD
      fetch with python3-requests' HTTPDigestAuth (MD5, SHA-256);
      prints "status <code>".
  http_digest.py manual URL USER PASSWORD [--repeat N] [--sleep S] [--realm R]
      get a challenge, compute the Digest response here (MD5 / SHA-256, qop=auth)
      and send the SAME Authorization header N times (a replay after the first),
      after sleeping S seconds; prints "status <code> <WWW-Authenticate or ->" per try.
"""
import hashlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def fetch(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("WWW-Authenticate", "-")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate", "-")


def parse_challenge(h):
    assert h.startswith("Digest "), h
    out = {}
    for part in h[len("Digest "):].split(", "):
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip().strip('"')
    return out


def main():
    mode, url, user, password = sys.argv[1:5]
    rest = sys.argv[5:]
    if mode == "requests":
        import requests
        from requests.auth import HTTPDigestAuth
        r = requests.get(url, auth=HTTPDigestAuth(user, password), timeout=10)
        print("status", r.status_code)
        return
    if mode == "urllib":
        mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        mgr.add_password(None, url, user, password)
        opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(mgr))
        try:
            with opener.open(url, timeout=10) as r:
                print("status", r.status)
        except urllib.error.HTTPError as e:
            print("status", e.code)
        return
    repeat, pause, realm = 1, 0.0, None
    while rest:
        flag, val = rest[0], rest[1]
        rest = rest[2:]
        if flag == "--repeat":
            repeat = int(val)
        elif flag == "--sleep":
            pause = float(val)
        elif flag == "--realm":
            realm = val
    status, www = fetch(url)
    assert status == 401, (status, www)
    ch = parse_challenge(www)
    alg = ch.get("algorithm", "MD5")
    H = (lambda s: hashlib.sha256(s.encode()).hexdigest()) if alg == "SHA-256" else (
        lambda s: hashlib.md5(s.encode()).hexdigest())
    uri = urllib.parse.urlsplit(url).path
    cnonce, nc = "0a4f113b", "00000001"
    realm = realm or ch["realm"]
    ha1 = H(f"{user}:{realm}:{password}")
    ha2 = H(f"GET:{uri}")
    resp = H(f"{ha1}:{ch['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    auth = (f'Digest username="{user}", realm="{realm}", nonce="{ch["nonce"]}", uri="{uri}", '
            f'algorithm={alg}, qop=auth, nc={nc}, cnonce="{cnonce}", response="{resp}"')
    if pause:
        time.sleep(pause)
    for _ in range(repeat):
        status, www = fetch(url, {"Authorization": auth})
        print("status", status, www)


if __name__ == "__main__":
    main()
