#!/usr/bin/env python3
"""Mail client for the end-to-end tests (IMAP, POP3, SMTP submission).

Logs in to nginx's mail proxy with a chosen mechanism, up to --tries times on
ONE connection (nginx keeps the connection open after a failure only when
the auth server sent Auth-Wait), then does one action that needs the backend
(IMAP SELECT INBOX, POP3 STAT, SMTP: send a message). Prints one JSON line:

  {"ok": bool, "error": str|null,
   "attempts": [{"ok": bool, "response": str, "elapsed_s": float}, ...],
   "after": {"ok": bool, "response": str} | null,
   "server_responses": [str, ...]}

`ok` is true when the last attempt logged in and the action succeeded. The
exit code is 0 whenever the result was printed (failures are data).
With --format toml the same result is printed as TOML instead.

Mechanisms:
  imap: login (the LOGIN command), plain, authlogin (AUTHENTICATE LOGIN),
        cram-md5
  pop3: user (USER/PASS), plain, authlogin, cram-md5, apop
  smtp: plain, login, cram-md5

Passwords are taken byte-exact from argv (UTF-8): space, %, +, :, " and
non-ASCII are sent as the protocol requires (IMAP: quoted string, or a
literal for non-ASCII; SASL: base64 of the UTF-8 bytes).
"""

import argparse
import base64
import hashlib
import hmac
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import sys
import time

import toml_out

RESPONSES = []


def note(line):
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    RESPONSES.append(line)
    return line


def utf8(text):
    return text.encode("utf-8", "surrogateescape")


def b64(data):
    return base64.b64encode(data).decode("ascii")


def cram_md5_response(user, password, challenge):
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest()
    return user + b" " + digest.encode("ascii")


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def quietly(call):
    """Calls `call`, ignoring any error: a session's goodbye may fail."""
    try:
        call()
    except Exception:
        pass


# ---------------------------------------------------------------- IMAP


class Imap:
    def __init__(self, args):
        self.args = args
        self.conn = imaplib.IMAP4(args.host, args.port, timeout=args.timeout)
        note(self.conn.welcome)
        if args.starttls:
            typ, dat = self.conn.starttls(ssl_context=tls_context())
            note(f"STARTTLS {typ} {dat}")

    def _finish(self, typ, dat):
        text = " ".join(
            d.decode("utf-8", "replace") if isinstance(d, bytes) else str(d)
            for d in dat
            if d is not None
        )
        response = note(f"{typ} {text}".strip())
        if typ == "OK":
            self.conn.state = "AUTH"
        return typ == "OK", response

    def _failed(self, exc):
        """A tagged BAD or a dropped connection. nginx announces its own
        failures untagged first ("* BAD internal server error"): keep those."""
        for kind in ("BAD", "BYE", "NO"):
            for data in self.conn.untagged_responses.pop(kind, []):
                note(f"* {kind} {data.decode('utf-8', 'replace') if isinstance(data, bytes) else data}")
        if isinstance(exc, imaplib.IMAP4.abort):
            return note(f"connection error: {exc}")
        return note(f"BAD {exc}")

    def _authenticate(self, mech, steps):
        """AUTHENTICATE with a callback answering each server challenge.

        imaplib.authenticate() raises on NO without the status; this keeps
        the tagged response text.
        """
        conn = self.conn

        def answer(challenge):
            note(f"+ {b64(challenge)}")
            return steps(challenge)

        conn.literal = imaplib._Authenticator(answer).process
        try:
            typ, dat = conn._simple_command("AUTHENTICATE", mech)
        except conn.error as e:
            return False, self._failed(e)
        return self._finish(typ, dat)

    def attempt(self, user, password):
        mech = self.args.mech
        conn = self.conn
        if mech == "login":
            try:
                if password.isascii():
                    typ, dat = conn._simple_command(
                        "LOGIN", conn._quote(user.decode()), conn._quote(password.decode())
                    )
                else:
                    # Quoted strings must be 7-bit; send the password as a
                    # literal ({n} + raw bytes), as RFC 3501 allows.
                    conn.literal = password
                    typ, dat = conn._simple_command("LOGIN", conn._quote(user.decode()))
            except conn.error as e:
                return False, self._failed(e)
            return self._finish(typ, dat)
        if mech == "plain":
            return self._authenticate("PLAIN", lambda _c: b"\0" + user + b"\0" + password)
        if mech == "authlogin":
            queue = [user, password]
            return self._authenticate("LOGIN", lambda _c: queue.pop(0) if queue else b"")
        if mech == "cram-md5":
            return self._authenticate(
                "CRAM-MD5", lambda c: cram_md5_response(user, password, c)
            )
        raise SystemExit(f"imap: unknown mech {mech}")

    def after(self):
        typ, dat = self.conn.select("INBOX")
        response = note(f"SELECT {typ} {dat}")
        return typ == "OK", response

    def close(self):
        quietly(self.conn.logout)


# ---------------------------------------------------------------- POP3


class Pop3:
    def __init__(self, args):
        self.args = args
        self.conn = poplib.POP3(args.host, args.port, timeout=args.timeout)
        note(self.conn.welcome)
        if args.starttls:
            note(self.conn.stls(context=tls_context()))

    def _line(self):
        line, _ = self.conn._getline()
        return note(line)

    def _put(self, data):
        if isinstance(data, str):
            data = data.encode("ascii")
        self.conn._putline(data)

    def _sasl(self, mech, steps):
        """AUTH <mech>, answering each '+ <base64>' challenge with steps()."""
        self._put(f"AUTH {mech}")
        while True:
            line = self._line()
            if line.startswith("+OK"):
                return True, line
            if line.startswith("-ERR"):
                return False, line
            if line.startswith("+"):
                challenge = base64.b64decode(line[1:].strip() or "")
                self._put(b64(steps(challenge)))
            else:
                return False, line

    def attempt(self, user, password):
        mech = self.args.mech
        if mech == "user":
            self._put(b"USER " + user)
            line = self._line()
            if not line.startswith("+OK"):
                return False, line
            self._put(b"PASS " + password)
            line = self._line()
            return line.startswith("+OK"), line
        if mech == "apop":
            timestamp = self.conn.timestamp.match(self.conn.welcome)
            if not timestamp:
                return False, note("no APOP timestamp in greeting")
            digest = hashlib.md5(timestamp.group(1) + password).hexdigest()
            self._put(b"APOP " + user + b" " + digest.encode("ascii"))
            line = self._line()
            return line.startswith("+OK"), line
        if mech == "plain":
            return self._sasl("PLAIN", lambda _c: b"\0" + user + b"\0" + password)
        if mech == "authlogin":
            queue = [user, password]
            return self._sasl("LOGIN", lambda _c: queue.pop(0) if queue else b"")
        if mech == "cram-md5":
            return self._sasl("CRAM-MD5", lambda c: cram_md5_response(user, password, c))
        raise SystemExit(f"pop3: unknown mech {mech}")

    def after(self):
        try:
            count, size = self.conn.stat()
        except poplib.error_proto as e:
            return False, note(f"STAT {e}")
        return True, note(f"STAT {count} {size}")

    def close(self):
        quietly(self.conn.quit)


# ---------------------------------------------------------------- SMTP


class Smtp:
    def __init__(self, args):
        self.args = args
        self.conn = smtplib.SMTP(args.host, args.port, timeout=args.timeout)
        code, msg = self.conn.ehlo("client.example.test")
        note(f"{code} {msg.decode('utf-8', 'replace')}")
        if args.starttls:
            code, msg = self.conn.starttls(context=tls_context())
            note(f"{code} {msg.decode('utf-8', 'replace')}")
            self.conn.ehlo("client.example.test")

    def _cmd(self, line):
        code, msg = self.conn.docmd(line)
        return code, note(f"{code} {msg.decode('utf-8', 'replace')}")

    def attempt(self, user, password):
        mech = self.args.mech
        # smtplib's own auth() encodes as ASCII, so SASL is done by hand.
        if mech == "plain":
            code, resp = self._cmd("AUTH PLAIN " + b64(b"\0" + user + b"\0" + password))
        elif mech == "login":
            code, resp = self._cmd("AUTH LOGIN")
            if code == 334:
                code, resp = self._cmd(b64(user))
            if code == 334:
                code, resp = self._cmd(b64(password))
        elif mech == "cram-md5":
            code, resp = self._cmd("AUTH CRAM-MD5")
            if code == 334:
                challenge = base64.b64decode(resp.split(" ", 1)[1])
                code, resp = self._cmd(b64(cram_md5_response(user, password, challenge)))
        else:
            raise SystemExit(f"smtp: unknown mech {mech}")
        return code == 235, resp

    def after(self):
        message = (
            f"From: {self.args.mail_from}\r\n"
            f"To: {self.args.rcpt}\r\n"
            f"Subject: e2e {self.args.marker}\r\n"
            f"\r\n"
            f"body {self.args.marker}\r\n"
        ).encode("utf-8")
        try:
            refused = self.conn.sendmail(self.args.mail_from, [self.args.rcpt], message)
        except smtplib.SMTPException as e:
            return False, note(f"sendmail: {e}")
        return not refused, note(f"sent refused={refused}")

    def close(self):
        quietly(self.conn.quit)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("protocol", choices=["imap", "pop3", "smtp"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument(
        "--password",
        action="append",
        required=True,
        help="password for attempt i (repeat the option); the last one is reused",
    )
    parser.add_argument("--mech", required=True)
    parser.add_argument("--tries", type=int, default=1)
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--no-after", action="store_true", help="skip the post-login action")
    parser.add_argument("--mail-from", default="sender@example.org")
    parser.add_argument("--rcpt", default="rcpt@example.org")
    parser.add_argument("--marker", default="marker")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--format", choices=["json", "toml"], default="json",
        help="output format (the Rust tests read TOML; null fields are omitted there)",
    )
    args = parser.parse_args()

    result = {"ok": False, "error": None, "attempts": [], "after": None, "server_responses": RESPONSES}
    session = None
    try:
        session = {"imap": Imap, "pop3": Pop3, "smtp": Smtp}[args.protocol](args)
        user = utf8(args.user)
        for i in range(args.tries):
            password = utf8(args.password[min(i, len(args.password) - 1)])
            start = time.monotonic()
            try:
                ok, response = session.attempt(user, password)
            except (OSError, EOFError, imaplib.IMAP4.abort, poplib.error_proto,
                    smtplib.SMTPServerDisconnected) as e:
                ok, response = False, note(f"connection error: {type(e).__name__}: {e}")
            result["attempts"].append(
                {"ok": ok, "response": response, "elapsed_s": round(time.monotonic() - start, 3)}
            )
            if ok:
                break
            if response.startswith("connection error"):
                break
        if result["attempts"] and result["attempts"][-1]["ok"]:
            if args.no_after:
                result["ok"] = True
            else:
                ok, response = session.after()
                result["after"] = {"ok": ok, "response": response}
                result["ok"] = ok
    except Exception as e:  # connection refused, TLS failure, protocol error...
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        if session is not None:
            session.close()
    if args.format == "toml":
        print(toml_out.table(result), end="")
    else:
        print(json.dumps(result, ensure_ascii=False))
    sys.stdout.flush()


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
