#!/usr/bin/env python3
"""One SMTP session without AUTH (nginx `smtp_auth none`) for the e2e tests.

EHLO, MAIL FROM, then every --rcpt in turn on the same connection, then DATA
(with --marker in the body) if any recipient was accepted, then QUIT. Prints
TOML for the Rust side: `steps` (command, code, text, elapsed_s of each
command) and `closed` (the server hung up before QUIT was answered).

Usage: smtp_relay.py --port N --from ADDR --rcpt ADDR [--rcpt ADDR ...]
                     [--marker TEXT] [--host 127.0.0.1] [--timeout 30]
"""

import argparse
import smtplib
import sys
import time

import toml_out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--helo", default="client.example.test")
    parser.add_argument("--from", dest="mail_from", required=True)
    parser.add_argument("--rcpt", action="append", required=True)
    parser.add_argument("--marker", default="relay-e2e")
    parser.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args()

    steps = []
    closed = False
    conn = smtplib.SMTP(args.host, args.port, timeout=args.timeout)

    def record(command, started, code, msg):
        steps.append(
            {
                "command": command,
                "code": code,
                "text": msg.decode("utf-8", "replace"),
                "elapsed_s": round(time.monotonic() - started, 3),
            }
        )
        return code

    def cmd(line):
        started = time.monotonic()
        code, msg = conn.docmd(line)
        return record(line, started, code, msg)

    try:
        started = time.monotonic()
        code, msg = conn.ehlo(args.helo)
        record(f"EHLO {args.helo}", started, code, msg)
        cmd(f"MAIL FROM:<{args.mail_from}>")
        accepted = [r for r in args.rcpt if cmd(f"RCPT TO:<{r}>") == 250]
        if accepted and cmd("DATA") == 354:
            body = (
                f"From: <{args.mail_from}>\r\n"
                f"To: <{accepted[0]}>\r\n"
                f"Subject: e2e {args.marker}\r\n"
                f"\r\n"
                f"body {args.marker}\r\n"
                f".\r\n"
            )
            started = time.monotonic()
            conn.send(body.encode("utf-8"))
            code, msg = conn.getreply()
            record("<message>", started, code, msg)
        cmd("QUIT")
    except smtplib.SMTPServerDisconnected:
        closed = True
    finally:
        conn.close()
    sys.stdout.write(toml_out.table({"steps": steps, "closed": closed}))


if __name__ == "__main__":
    main()
