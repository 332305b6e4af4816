#!/usr/bin/env python3
"""Soak driver: starts nginx-auth-fcgi on a unix socket with a passwd-file
(a {PLAIN} and a {SHA512-CRYPT} user) and the throttle on, drives mixed
good/bad FastCGI traffic at it for a while, samples the daemon's VmRSS and
open fds every --sample seconds, and prints a table and a verdict.

Traffic (weighted, seeded):
  good-keepalive  5 logins on one KEEP_CONN connection, alice or bob   -> OK
  good-fresh      one login per connection (mail or HTTP Basic)       -> OK
  wrong-password  alice/bob, random password, random client IP        -> not OK
  brute-force     15 wrong passwords from one IP (gets blocked)       -> not OK
  unknown-user    random user name, random client IP                  -> not OK
  malformed       garbage, bad version, 2 GiB pair claim, truncation  -> closed, never OK
  over-limit      100 kB of params                                    -> END_REQUEST OVERLOADED
  aborted         ABORT_REQUEST mid-request, then a good login        -> END_REQUEST, then OK
  dropped         connection dropped mid-request                      -> (nothing to read)

Good logins come only from 198.51.100.0/24, which never fails a login, so
the throttle never has a reason to refuse them: a good login that is not OK
is a wrong verdict, as is any bad one that is OK.

Stdlib only. Exit status 0 iff the verdict is PASS.
"""

import argparse
import asyncio
import base64
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

BEGIN, ABORT, END, PARAMS, STDIN, STDOUT = 1, 2, 3, 4, 5, 6
UNKNOWN_TYPE = 11
KEEP_CONN = 1
REQUEST_COMPLETE, OVERLOADED = 0, 2

ALICE = (b"alice", b"alice-soak-pw-31")  # {PLAIN}
BOB = (b"bob", b"bob-soak-pw-77")  # {SHA512-CRYPT}
WRONG_MARK = b"soak-wrong-"  # every wrong password starts with this
CLOSE_WITHIN = 20.0


# ------------------------------------------------------------- encoding


def record(ty, rid, content=b"", padding=None):
    if padding is None:
        padding = (8 - len(content) % 8) % 8
    return (struct.pack(">BBHHBx", 1, ty, rid, len(content), padding)
            + content + b"\0" * padding)


def enc_len(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def enc_pairs(items):
    return b"".join(enc_len(len(n)) + enc_len(len(v)) + n + v for n, v in items)


def stream(ty, rid, data):
    out = b"".join(record(ty, rid, data[i:i + 65535])
                   for i in range(0, len(data), 65535))
    return out + record(ty, rid)


def request(rid, flags, items, stdin=b""):
    return (record(BEGIN, rid, struct.pack(">HB5x", 1, flags))
            + stream(PARAMS, rid, enc_pairs(items)) + stream(STDIN, rid, stdin))


def mail(user, password, ip):
    return [(b"HTTP_AUTH_METHOD", b"plain"), (b"HTTP_AUTH_USER", user),
            (b"HTTP_AUTH_PASS", password), (b"HTTP_AUTH_PROTOCOL", b"imap"),
            (b"HTTP_AUTH_LOGIN_ATTEMPT", b"1"), (b"HTTP_CLIENT_IP", ip.encode())]


def basic(user, password, ip):
    cred = base64.b64encode(user + b":" + password)
    return [(b"REQUEST_METHOD", b"GET"), (b"REQUEST_URI", b"/private/"),
            (b"AUTH_REALM", b"soak"), (b"REMOTE_ADDR", ip.encode()),
            (b"HTTP_AUTHORIZATION", b"Basic " + cred)]


async def read_record(reader):
    """(type, id, content), or None at EOF/reset before a header."""
    try:
        head = await reader.readexactly(8)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    _, ty, rid, length, padding = struct.unpack(">BBHHBx", head)
    body = await reader.readexactly(length + padding)
    return ty, rid, body[:length]


def verdict(stdout):
    head = stdout.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers = dict(line.split(": ", 1) for line in head.split("\r\n") if ": " in line)
    if "Auth-Status" in headers:
        return "OK" if headers["Auth-Status"] == "OK" else "refused"
    return "OK" if headers.get("Status", "").startswith("200") else "refused"


async def read_events(reader, until_end=None):
    """Events up to END_REQUEST for `until_end`, or (None) until the close:
    ("reply", id, verdict), ("end", id, status), ("unknown-type", t)."""
    events, stdout = [], {}
    while True:
        r = await read_record(reader)
        if r is None:
            return events
        ty, rid, content = r
        if ty == STDOUT:
            stdout.setdefault(rid, bytearray()).extend(content)
        elif ty == END:
            status = content[4]
            if rid in stdout:
                events.append(("reply", rid, verdict(bytes(stdout.pop(rid)))))
            else:
                events.append(("end", rid, status))
            if until_end == rid:
                return events
        elif ty == UNKNOWN_TYPE:
            events.append(("unknown-type", content[0]))
        else:
            events.append(("record", ty, rid))


# -------------------------------------------------------------- traffic


class Stats:
    def __init__(self):
        self.requests = 0
        self.by_kind = {}
        self.wrong = []  # wrong verdicts
        self.anomalies = []  # protocol surprises

    def count(self, kind, n=1):
        self.requests += n
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n

    def wrong_verdict(self, what):
        self.wrong.append(what)

    def anomaly(self, what):
        self.anomalies.append(what)


class Traffic:
    def __init__(self, sock, stats, rng):
        self.sock, self.stats, self.rng = sock, stats, rng

    def bad_ip(self):
        r = self.rng
        if r.random() < 0.2:
            return "2001:db8:%x:%x::%x" % (r.randrange(65536), r.randrange(65536), r.randrange(65536))
        return "10.%d.%d.%d" % (r.randrange(256), r.randrange(256), r.randrange(1, 255))

    def good_ip(self):
        return "198.51.100.%d" % self.rng.randrange(1, 255)

    def bad_password(self):
        return WRONG_MARK + b"%08x" % self.rng.getrandbits(32)

    async def open(self):
        return await asyncio.open_unix_connection(self.sock)

    async def one(self, kind, items, expect_ok):
        """One request on a fresh connection, no KEEP_CONN."""
        reader, writer = await self.open()
        try:
            writer.write(request(1, 0, items))
            await writer.drain()
            ev = await asyncio.wait_for(read_events(reader), CLOSE_WITHIN)
        finally:
            writer.close()
        self.check(kind, ev, [1], expect_ok)

    def check(self, kind, ev, ids, expect_ok):
        self.stats.count(kind, len(ids))
        replies = [e for e in ev if e[0] == "reply"]
        if [e[1] for e in replies] != ids or len(replies) != len(ev):
            self.stats.anomaly("%s: %r" % (kind, ev))
        for e in replies:
            if (e[2] == "OK") != expect_ok:
                self.stats.wrong_verdict("%s: %r" % (kind, e))

    async def good_keepalive(self):
        user = self.rng.choice([ALICE, BOB])
        ip = self.good_ip()
        reader, writer = await self.open()
        ev = []
        try:
            for i in range(1, 6):
                writer.write(request(i, KEEP_CONN if i < 5 else 0, mail(*user, ip)))
                await writer.drain()
                ev += await asyncio.wait_for(read_events(reader, until_end=i), CLOSE_WITHIN)
        finally:
            writer.close()
        self.check("good-keepalive", ev, [1, 2, 3, 4, 5], True)

    async def good_fresh(self):
        user = self.rng.choice([ALICE, BOB])
        build = self.rng.choice([mail, basic])
        await self.one("good-fresh", build(*user, self.good_ip()), True)

    async def wrong_password(self):
        user = self.rng.choice([ALICE, BOB])[0]
        build = mail if self.rng.random() < 0.8 else basic
        await self.one("wrong-password", build(user, self.bad_password(), self.bad_ip()), False)

    async def brute_force(self):
        ip = self.bad_ip()
        user = self.rng.choice([ALICE, BOB])[0]
        reader, writer = await self.open()
        ev = []
        try:
            for i in range(1, 16):
                flags = KEEP_CONN if i < 15 else 0
                writer.write(request(i, flags, mail(user, self.bad_password(), ip)))
                await writer.drain()
                ev += await asyncio.wait_for(read_events(reader, until_end=i), CLOSE_WITHIN)
        finally:
            writer.close()
        self.check("brute-force", ev, list(range(1, 16)), False)

    async def unknown_user(self):
        name = b"nouser%d" % self.rng.randrange(100000)
        await self.one("unknown-user", mail(name, self.bad_password(), self.bad_ip()), False)

    async def malformed(self):
        r = self.rng
        good = request(1, 0, mail(*ALICE, self.good_ip()))
        choice = r.randrange(5)
        if choice == 0:
            wire = bytes(r.getrandbits(8) for _ in range(r.randrange(1, 200)))
        elif choice == 1:
            wire = struct.pack(">BBHHBx", 2, BEGIN, 1, 8, 0) + b"\0\1" + b"\0" * 6 + good
        elif choice == 2:
            claim = b"\xff\xff\xff\xff\x00name"
            wire = (record(BEGIN, 1, struct.pack(">HB5x", 1, 0))
                    + stream(PARAMS, 1, claim) + record(STDIN, 1))
        elif choice == 3:
            wire = good[:r.randrange(len(good))]
        else:
            wire = record(BEGIN, 1, b"\0\1\0")
        reader, writer = await self.open()
        try:
            writer.write(wire)
            await writer.drain()
            writer.write_eof()
            ev = await asyncio.wait_for(read_events(reader), CLOSE_WITHIN)
        except ConnectionError:
            ev = []
        finally:
            writer.close()
        self.stats.count("malformed")
        if any(e[0] == "reply" and e[2] == "OK" for e in ev):
            self.stats.wrong_verdict("malformed %d: %r" % (choice, ev))
        elif any(e[0] not in ("unknown-type",) for e in ev):
            self.stats.anomaly("malformed %d: %r" % (choice, ev))

    async def over_limit(self):
        items = mail(*ALICE, self.good_ip()) + [(b"HTTP_X_PAD", b"p" * 100000)]
        reader, writer = await self.open()
        try:
            writer.write(request(1, 0, items))
            try:
                await writer.drain()
            except ConnectionError:
                pass
            ev = await asyncio.wait_for(read_events(reader), CLOSE_WITHIN)
        finally:
            writer.close()
        self.stats.count("over-limit")
        if ev != [("end", 1, OVERLOADED)]:
            self.stats.anomaly("over-limit: %r" % (ev,))

    async def aborted(self):
        ip = self.good_ip()
        wire = (record(BEGIN, 1, struct.pack(">HB5x", 1, KEEP_CONN))
                + record(PARAMS, 1, enc_pairs(mail(*ALICE, ip))) + record(ABORT, 1)
                + request(2, 0, mail(*ALICE, ip)))
        reader, writer = await self.open()
        try:
            writer.write(wire)
            await writer.drain()
            ev = await asyncio.wait_for(read_events(reader), CLOSE_WITHIN)
        finally:
            writer.close()
        self.stats.count("aborted")
        if ev != [("end", 1, REQUEST_COMPLETE), ("reply", 2, "OK")]:
            if any(e[0] == "reply" and e[2] != "OK" for e in ev):
                self.stats.wrong_verdict("aborted: %r" % (ev,))
            else:
                self.stats.anomaly("aborted: %r" % (ev,))

    async def dropped(self):
        wire = request(1, 0, mail(*ALICE, self.good_ip()))
        cut = self.rng.randrange(1, len(wire))
        reader, writer = await self.open()
        writer.write(wire[:cut])
        await writer.drain()
        writer.transport.abort()
        self.stats.count("dropped")

    KINDS = [("good_keepalive", 10), ("good_fresh", 20), ("wrong_password", 30),
             ("brute_force", 2), ("unknown_user", 15), ("malformed", 8),
             ("over_limit", 3), ("aborted", 6), ("dropped", 6)]

    async def worker(self, stop_at):
        names = [k for k, _ in self.KINDS]
        weights = [w for _, w in self.KINDS]
        while time.monotonic() < stop_at:
            kind = self.rng.choices(names, weights)[0]
            try:
                await getattr(self, kind)()
            except (asyncio.TimeoutError, ConnectionError, OSError) as e:
                self.stats.anomaly("%s: %s: %s" % (kind, type(e).__name__, e))
            await asyncio.sleep(0.002)


# ------------------------------------------------------------- the daemon


def proc_status(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s" % field)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def hash_password(binary, password):
    out = subprocess.run([binary, "hash", "-s", "SHA512-CRYPT"], input=password,
                         capture_output=True, check=True)
    return out.stdout.strip()


def start_daemon(binary, tmp):
    users = os.path.join(tmp, "users")
    with open(users, "wb") as f:
        f.write(ALICE[0] + b":{PLAIN}" + ALICE[1] + b"::::::\n")
        f.write(BOB[0] + b":" + hash_password(binary, BOB[1]) + b"::::::\n")
    config = os.path.join(tmp, "config.toml")
    with open(config, "w") as f:
        f.write('passdb = ["passwd-file:%s"]\n' % users)
        f.write('upstream = ["imap=127.0.0.1:1143"]\n')
        f.write('log = "stderr"\nlog_level = "warn"\n')
        f.write("[limits]\nread_timeout_ms = 3000\n")
        f.write("[throttle]\nenabled = true\nwindow_secs = 60\nblock_ip = 30\n"
                "block_ip_user = 5\nblock_secs = 30\n")
    sock = os.path.join(tmp, "auth.sock")
    log = open(os.path.join(tmp, "daemon.log"), "wb")
    proc = subprocess.Popen([binary, "serve", "--config", config, "--listen", "unix:" + sock],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("daemon did not start:\n" + read_log(tmp))
        time.sleep(0.05)
    return proc, sock


def read_log(tmp):
    with open(os.path.join(tmp, "daemon.log"), "rb") as f:
        return f.read().decode("utf-8", "replace")


async def quiet_fds(pid, base, within=10.0):
    deadline = time.monotonic() + within
    fds = fd_count(pid)
    while fds != base and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        fds = fd_count(pid)
    return fds


async def main_async(args, proc, sock, tmp):
    pid = proc.pid
    stats = Stats()
    traffic = Traffic(sock, stats, random.Random(args.seed))
    # Baseline: one good login, then the idle fd count.
    await traffic.good_fresh()
    await asyncio.sleep(0.5)
    fd_base = fd_count(pid)
    rss0 = proc_status(pid, "VmRSS")
    start = time.monotonic()
    stop_at = start + args.seconds
    workers = [asyncio.ensure_future(Traffic(sock, stats, random.Random(args.seed + i)).worker(stop_at))
               for i in range(args.workers)]
    rows = [(0, 0, 0.0, rss0, fd_base, 0)]
    print("%6s %10s %8s %10s %5s %6s" % ("t/s", "requests", "req/s", "VmRSS/kB", "fds", "wrong"), flush=True)
    print("%6d %10d %8.0f %10d %5d %6d" % rows[0], flush=True)
    last_n, last_t = 0, start
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(args.sample, max(0.0, stop_at - time.monotonic())))
        if proc.poll() is not None:
            break
        now = time.monotonic()
        n = stats.requests
        row = (round(now - start), n, (n - last_n) / max(now - last_t, 1e-9),
               proc_status(pid, "VmRSS"), fd_count(pid), len(stats.wrong))
        rows.append(row)
        print("%6d %10d %8.0f %10d %5d %6d" % row, flush=True)
        last_n, last_t = n, now
    await asyncio.gather(*workers)
    alive = proc.poll() is None
    fd_end = await quiet_fds(pid, fd_base) if alive else -1
    rss_end = proc_status(pid, "VmRSS") if alive else -1
    hwm = proc_status(pid, "VmHWM") if alive else -1
    return stats, rows, fd_base, fd_end, rss_end, hwm, alive


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the nginx-auth-fcgi binary")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--sample", type=float, default=10, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds before the RSS baseline")
    ap.add_argument("--rss-growth-kib", type=int, default=None,
                    help="largest allowed VmRSS growth after the warm-up (off when not given)")
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=4711)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, log) after a PASS")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="soak-")
    proc, sock = start_daemon(args.bin, tmp)
    try:
        stats, rows, fd_base, fd_end, rss_end, hwm, alive = asyncio.run(main_async(args, proc, sock, tmp))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log = read_log(tmp)

    print()
    print("requests by kind: " + ", ".join("%s=%d" % kv for kv in sorted(stats.by_kind.items())))
    print("total requests: %d in %.0f s" % (stats.requests, rows[-1][0]))
    failures = []
    print("wrong verdicts: %d" % len(stats.wrong))
    for w in stats.wrong[:20]:
        print("  " + w)
    if stats.wrong:
        failures.append("wrong verdicts")
    print("protocol anomalies: %d" % len(stats.anomalies))
    for a in stats.anomalies[:20]:
        print("  " + a)
    if stats.anomalies:
        failures.append("protocol anomalies")
    print("daemon alive at the end: %s" % alive)
    if not alive:
        failures.append("daemon died")
    max_fds = max(r[4] for r in rows)
    print("fds: baseline %d, at the end (idle) %d, highest sample %d" % (fd_base, fd_end, max_fds))
    if fd_end != fd_base:
        failures.append("fd count %d != baseline %d" % (fd_end, fd_base))
    after = [r for r in rows if r[0] >= args.warmup]
    if after:
        rss_w = after[0][3]
        growth = max(r[3] for r in after) - rss_w
        third = [r for r in rows if r[0] >= rows[-1][0] * 2 / 3]
        last_growth = third[-1][3] - third[0][3] if third else 0
        print("VmRSS: start %d kB, after warm-up (t=%d s) %d kB, highest after warm-up +%d kB, "
              "end %d kB, last third %+d kB, VmHWM %d kB"
              % (rows[0][3], after[0][0], rss_w, growth, rss_end, last_growth, hwm))
        if args.rss_growth_kib is not None and growth > args.rss_growth_kib:
            failures.append("VmRSS grew %d kB after the warm-up (bound %d kB)"
                            % (growth, args.rss_growth_kib))
    else:
        print("VmRSS: start %d kB, end %d kB, VmHWM %d kB (run shorter than the warm-up)"
              % (rows[0][3], rss_end, hwm))
    print("throttle (from the log): %d blocks, %d counter resets at the 100,000-key cap"
          % (log.count("throttle: blocked"), log.count("counters reset")))
    leaked = [p for p in (ALICE[1], BOB[1], WRONG_MARK) if p.decode() in log]
    print("passwords in the daemon log: %d" % len(leaked))
    if leaked:
        failures.append("password in the log")
    if "panicked" in log:
        failures.append("panic in the daemon log")
    keep = args.keep or failures
    print("daemon log: %d lines, %d bytes%s" % (log.count("\n"), len(log), " (kept in %s)" % tmp if keep else ""))
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    print("verdict: %s" % ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
