#!/usr/bin/env python3
"""Attacks a real `merit serve` on loopback the way a hostile and a careless
user would (issue 14's findings, replayed one by one), then fuzzes every
route of its OpenAPI document. Fails on any 5xx, a crash, a request that
hangs past its bound, an error that is not JSON, or a leak (the server's
data directory, another user's draft or unpublished adapter).

    scripts/attack.py [--merit target/debug/merit] [--rounds 12] [--seed 7]

Bounded: loopback only, one server at a time, a few minutes on 2 cores.
Python's standard library only.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "crates", "merit-lm", "tests", "fixtures", "llama")
BOUND = 20.0  # seconds any one request may take
SECRET_DRAFT = "secret-draft-7f3a"

failures = []


def fail(what):
    failures.append(what)
    print(f"FAIL {what}", flush=True)


def check(cond, what):
    if not cond:
        fail(what)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A `merit serve` on a fresh data directory."""

    def __init__(self, merit, flags=()):
        self.merit = merit
        self.dir = tempfile.mkdtemp(prefix="merit-attack-")
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        env = dict(os.environ, MERIT_DEFAULT_MODEL="none", MERIT_LOG="warn")
        env.pop("MERIT_SERVER", None)
        env.pop("MERIT_TOKEN", None)
        self.env = env
        self.proc = subprocess.Popen(
            [merit, "serve", "--listen", self.url, "--data-dir", self.dir, *flags],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"merit serve did not start: {self.proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.05)

    def cli(self, *args, token=None):
        env = dict(self.env)
        if token is not None:
            env["MERIT_SERVER"] = "http://" + self.url
            env["MERIT_TOKEN"] = token
        out = subprocess.run([self.merit, *args], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise SystemExit(f"merit {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def user(self, name, admin=False):
        args = ["user", "add", name, "--data-dir", self.dir] + (["--admin"] if admin else [])
        return self.cli(*args).strip().splitlines()[-1]

    def alive(self):
        return self.proc.poll() is None

    def peak_memory(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def request(self, method, path, token=None, body=None, raw=None, headers=None, expect_json=True):
        """One request; checks the bounds every answer must keep. Returns (status, headers, bytes)."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        start = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=BOUND)
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            status, rh, payload = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except (socket.timeout, TimeoutError):
            fail(f"{method} {path}: no answer within {BOUND} s")
            return 0, {}, b""
        except (ConnectionError, http.client.HTTPException) as e:
            check(self.alive(), f"{method} {path}: the server died ({e})")
            return 0, {}, b""
        finally:
            conn.close()
        took = time.time() - start
        where = f"{method} {path[:120]}"
        check(status < 500 or status == 503, f"{where}: {status} {payload[:300]!r}")
        check(took < BOUND, f"{where}: took {took:.1f} s")
        if expect_json and status >= 400:
            ctype = rh.get("content-type", "")
            check("json" in ctype, f"{where}: error {status} is not JSON ({ctype}): {payload[:200]!r}")
        text = payload.decode("utf-8", "replace")
        # (An answer may repeat what the caller sent; anything else of the server's is a leak.)
        sent = path + (data or b"").decode("utf-8", "replace")
        check(self.dir not in text or self.dir in sent, f"{where}: the answer shows the server's data directory")
        return status, rh, payload

    def json(self, method, path, token=None, body=None):
        status, _, payload = self.request(method, path, token, body)
        try:
            return status, json.loads(payload or b"null")
        except ValueError:
            return status, None


def multipart(files):
    boundary = "merit-attack-boundary"
    out = b""
    for name, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode("utf-8") + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def prose(seed):
    rng = random.Random(seed)
    words = ("the quiet river carried small boats past the old mill while farmers "
             "talked about the weather and the price of grain in the market town").split()
    sentences = []
    for _ in range(14):
        n = rng.randint(8, 14)
        s = " ".join(rng.choice(words) for _ in range(n))
        sentences.append(s[0].upper() + s[1:] + ".")
    return " ".join(sentences)


def wait_run(srv, token, run, statuses=("done", "failed", "stopped"), limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        _, r = srv.json("GET", f"/api/v1/runs/{run}", token)
        if r and r.get("status") in statuses:
            return r.get("status")
        time.sleep(0.3)
    fail(f"run {run} did not end within {limit} s")
    return None


def raw_exchange(port, data, wait):
    """Sends raw bytes and waits up to `wait` s; returns (closed_after_s or None, reply bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    s.sendall(data)
    start = time.time()
    reply = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return time.time() - start, reply
            reply += chunk
    except (socket.timeout, TimeoutError):
        return None, reply
    except ConnectionResetError:
        return time.time() - start, reply
    finally:
        s.close()


def attacks(merit):
    srv = Server(merit, ["--header-timeout", "2", "--body-timeout", "2", "--request-memory", "64"])
    try:
        ann, bob, root = srv.user("ann"), srv.user("bob"), srv.user("root", admin=True)
        srv.cli("model", "add", FIXTURE, "--name", "tiny", "--data-dir", srv.dir)
        rows = [{"instruction": "Say hi.", "output": "Hi there."}]

        print("critical: a LoRA rank of 10^9")
        st, r = srv.json("POST", "/api/v1/runs", ann, {"base": "tiny", "rows": rows, "rank": 1_000_000_000})
        check(st == 422, f"rank 10^9: {st} {r}")
        check(srv.alive(), "rank 10^9 took the server down")

        print("medium: max_steps 10^15, epochs 10^9, a run bigger than the worker")
        for field, value in [("max_steps", 10**15), ("epochs", 1e9), ("batch", 10**6)]:
            st, r = srv.json("POST", "/api/v1/runs", ann, {"base": "tiny", "rows": rows, field: value})
            check(st == 422, f"{field} {value}: {st} {r}")
        st, r = srv.json("POST", "/api/v1/runs", ann,
                         {"base": "tiny", "rows": rows, "rank": 1024, "batch": 1024, "data": {"cutoff_len": 131072}})
        check(st == 422, f"a run bigger than the worker: {st} {r}")

        print("high: any server path as a training base")
        messages = set()
        for base in [FIXTURE, "/etc/passwd", "/etc", "/no/such/path", os.path.join(srv.dir, "models"), "../../etc"]:
            st, r = srv.json("POST", "/api/v1/runs", ann, {"base": base, "rows": rows})
            check(st == 422, f"base {base}: {st}")
            messages.add(json.dumps(r).replace(json.dumps(base)[1:-1], "<base>"))
        check(len(messages) == 1, f"errors differ by path: {messages}")

        print("high: another user's unpublished adapter on /v1")
        st, run = srv.json("POST", "/api/v1/runs", ann, {"base": "tiny", "rows": rows * 4, "max_steps": 2, "rank": 2,
                                                     "data": {"eval_split": 0}})
        check(st == 201, f"a small run: {st} {run}")
        run_id = run["id"] if st == 201 else 0
        ended = wait_run(srv, ann, run_id)
        check(ended == "done", f"the small run ended {ended}: {srv.json('GET', f'/api/v1/runs/{run_id}', ann)[1]}")
        model = f"tiny:run-{run_id}"
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        st, _ = srv.json("POST", "/v1/chat/completions", bob, chat)
        check(st == 404, f"bob chats with ann's unpublished adapter: {st}")
        st, _ = srv.json("POST", "/v1/completions", bob, {"model": model, "prompt": "hi", "max_tokens": 2})
        check(st == 404, f"bob completes with ann's unpublished adapter: {st}")
        _, listed = srv.json("GET", "/v1/models", bob)
        check(model not in json.dumps(listed), "bob is shown ann's unpublished adapter")
        st, _ = srv.json("POST", "/v1/chat/completions", ann, chat)
        check(st == 200, f"ann chats with her own adapter: {st}")
        st, _ = srv.json("POST", f"/api/v1/runs/{run_id}/publish", root, {"price_per_1k_output": 1000})
        check(st in (403, 404), f"an administrator publishes ann's run: {st}")
        st, _ = srv.json("GET", f"/api/v1/runs/{run_id}/files/metrics.jsonl", bob)
        check(st == 404, f"bob reads ann's run files: {st}")

        print("medium: a priced adapter called with no balance")
        st, r = srv.json("POST", f"/api/v1/runs/{run_id}/publish", ann,
                         {"price_per_1k_input": 1000, "price_per_1k_output": 1000})
        check(st == 200, f"ann publishes at a price: {st} {r}")
        st, r = srv.json("POST", "/v1/chat/completions", bob, chat)
        check(st == 402, f"bob with balance 0 on a priced adapter: {st} {r}")
        _, bal = srv.json("GET", "/api/v1/accounts/bob/balance", bob)
        check(bal and bal.get("balance", 0) >= 0, f"bob's balance went negative: {bal}")

        print("medium: drafts and pending files on the ledger listing")
        policy = 'review = "owner"\n'
        for name, publish in [(SECRET_DRAFT, False), ("open", True)]:
            st, _ = srv.json("POST", "/api/v1/datanets", ann, {"name": name, "policy": policy, "publish": publish})
            check(st == 201, f"datanet {name}: {st}")
        body, h = multipart([("bob-pending.txt", prose(1).encode())])
        st, _, _ = srv.request("POST", "/api/v1/datanets/open/contributions", bob, raw=body, headers=h)
        check(st == 201, f"bob's upload: {st}")
        for path in ["/api/v1/ledger/entries?limit=1000", f"/api/v1/ledger/entries?subject=datanet:{SECRET_DRAFT}",
                     "/api/v1/datanets", "/api/v1/leaderboard", f"/api/v1/datanets/{SECRET_DRAFT}"]:
            for who in [None, bob]:
                _, _, payload = srv.request("GET", path, who)
                if SECRET_DRAFT not in path:
                    check(SECRET_DRAFT.encode() not in payload, f"{path} shows the draft's name to {who and 'bob'}")
        a, _, pa = srv.request("GET", f"/api/v1/datanets/{SECRET_DRAFT}", bob)
        b, _, pb = srv.request("GET", "/api/v1/datanets/no-such-net", bob)
        check(a == b == 404 and pa.replace(SECRET_DRAFT.encode(), b"X") == pb.replace(b"no-such-net", b"X"),
              f"a draft answers unlike a missing datanet: {a} {b}")
        _, _, payload = srv.request("GET", "/api/v1/ledger/entries?limit=1000")
        check(b'"contributor":"bob"' not in payload.replace(b" ", b""), "the public sees bob's pending file on the ledger")
        st, r = srv.json("GET", "/api/v1/ledger/entries?from=9223372036854775808")
        check(st == 400 or (st == 200 and r["entries"] == []), f"from=2^63 wraps: {st} {r}")

        print("medium: an administrator reviews and publishes what is not theirs")
        _, listed = srv.json("GET", "/api/v1/datanets/open/contributions", ann)
        cid = listed[0]["id"] if listed else 0
        st, _ = srv.json("POST", f"/api/v1/datanets/open/contributions/{cid}/approve", root)
        check(st == 403, f"an administrator approves: {st}")

        print("medium: slow headers, a stalled body")
        took, _ = raw_exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 8)
        check(took is not None and took < 6, f"slow headers held the connection for {took} s")
        stalled = b"POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na"
        took, _ = raw_exchange(srv.port, stalled, 8)
        check(took is not None and took < 6, f"a stalled body held the connection for {took} s")

        print("medium: a CR/LF in the login's next")
        st, _, _ = srv.request("POST", "/login", raw=b"token=x&next=%2F%0D%0ASet-Cookie%3A+a%3Db&csrf=y",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}, expect_json=False)
        check(st < 500, f"login with CR/LF: {st}")

        print("medium: a 100 MB upload held in memory")
        st, _ = srv.json("POST", "/api/v1/datanets", ann, {"name": "big", "publish": True,
                                                         "policy": "max_file_bytes = 200000000\n[limits]\nuser_bytes_per_day = 0\ndatanet_bytes_per_day = 0\n"})
        before = srv.peak_memory()
        body, h = multipart([("huge.txt", b"a" * (100 << 20))])
        st, _, payload = srv.request("POST", "/api/v1/datanets/big/contributions?dry_run=true", bob, raw=body, headers=h)
        check(st == 413, f"a 100 MB file on a 64 MiB request budget: {st} {payload[:200]!r}")
        grew = srv.peak_memory() - before
        check(grew < 48 << 20, f"a 100 MB upload raised peak memory by {grew >> 20} MiB")

        print("low: errors keep the JSON shape")
        for method, path, raw, headers in [
            ("DELETE", "/api/v1/leaderboard", None, {}),
            ("GET", "/api/v1/datanets/%FF", None, {}),
            ("POST", "/api/v1/datanets", b"{" + b" " * (3 << 20) + b"}", {"Content-Type": "application/json"}),
            ("POST", "/api/v1/tokens", b"not json", {"Content-Type": "application/json"}),
            ("GET", "/api/v1/me", None, {"Authorization": "Bearer \u00e9"}),
        ]:
            st, _, _ = srv.request(method, path, ann if "Authorization" not in headers else None, raw=raw,
                                   headers={k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()})
            check(400 <= st < 500, f"{method} {path}: {st}")
        st, _, _ = srv.request("POST", "/logout", expect_json=False)
        check(st < 500 and st != 415, f"/logout without a body: {st}")
        for raw in [b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", b"GET / HTTTP/9\r\n\r\n",
                    b"GET /api/v1/me HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"]:
            _, reply = raw_exchange(srv.port, raw, 5)
            check(reply.startswith(b"HTTP/1.1 4") and b"application/json" in reply,
                  f"a request hyper cannot parse: {reply[:120]!r}")

        print("low: stop strings, json_schema, PNG dimensions, file names, balances, headers")
        st, _ = srv.json("POST", "/v1/chat/completions", ann, dict(chat, model="tiny", stop=[""]))
        check(st == 422 or st == 400, f'stop [""]: {st}')
        st, _ = srv.json("POST", "/api/v1/datanets", ann,
                         {"name": "schemaless", "policy": 'review = "auto"\n', "json_schema": "not json"})
        check(st == 422, f"a json_schema the policy does not name: {st}")
        st, _ = srv.json("POST", "/api/v1/datanets", ann, {"name": "pics", "publish": True,
                                                          "policy": 'kind = "image"\nreview = "auto"\n'})
        png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00" + b"\0" * 40
        body, h = multipart([("huge.png", png)])
        st, _, payload = srv.request("POST", "/api/v1/datanets/pics/contributions", bob, raw=body, headers=h)
        check(b'"accepted"' not in payload, f"a PNG claiming 60000x60000 was accepted: {payload[:200]!r}")
        body, h = multipart([("evil\u202egnp.txt", prose(3).encode())])
        st, _, payload = srv.request("POST", "/api/v1/datanets/open/contributions?dry_run=true", bob, raw=body, headers=h)
        check("\u202e".encode() not in payload, "U+202E survives in a file name")
        a, _, pa = srv.request("GET", "/api/v1/accounts/ann/balance", bob)
        b, _, pb = srv.request("GET", "/api/v1/accounts/nobody-here/balance", bob)
        check(a == b == 404 and pa.replace(b"ann", b"X") == pb.replace(b"nobody-here", b"X"),
              f"balances tell whether a name exists: {a} {b}")
        _, headers, _ = srv.request("GET", "/", expect_json=False)
        for name in ["content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy"]:
            check(name in headers, f"no {name} header")
        st, _, _ = srv.request("POST", "/login", raw=b"token=" + ann.encode(),
                               headers={"Content-Type": "application/x-www-form-urlencoded"}, expect_json=False)
        check(st in (400, 403), f"sign-in without its form's CSRF token: {st}")

        print("low: tokens can be revoked")
        st, tok = srv.json("POST", "/api/v1/tokens", bob, {"label": "spare", "expires_in_days": 1})
        check(st == 201, f"a new token: {st}")
        st, _ = srv.json("DELETE", f"/api/v1/tokens/{tok['id']}", bob)
        check(st == 200, f"revoking it: {st}")
        st, _ = srv.json("GET", "/api/v1/me", tok["token"])
        check(st == 401, f"a revoked token still works: {st}")
        check(srv.alive(), "the server died during the attacks")
        return srv, {"ann": ann, "bob": bob, "root": root}
    except BaseException:
        srv.stop()
        raise


def rate_limit(merit):
    print("medium: invalid tokens bypass the public rate limit")
    srv = Server(merit, ["--rate-limit", "1", "--rate-burst", "5"])
    try:
        limited = 0
        for i in range(20):
            st, _, _ = srv.request("GET", "/api/v1/me", f"mrt_invalid_{i}")
            limited += st == 429
        check(limited >= 10, f"20 invalid tokens, {limited} answered 429")
    finally:
        srv.stop()


NASTY = ["0", "-1", "1", "99999999999999999999", "9223372036854775808", "..", "%2e%2e%2f%2e%2e", "%00", "%FF",
         "a" * 300, "%E2%80%AE", "run-1", "tiny", "open", SECRET_DRAFT, "ann", "%0d%0aX", "1.5", "null"]


def nasty_json(rng, depth=0):
    kinds = ["int", "big", "neg", "float", "str", "long", "null", "bool", "list", "obj"]
    k = rng.choice(kinds if depth < 3 else kinds[:8])
    return {
        "int": lambda: rng.randint(0, 10),
        "big": lambda: 10 ** rng.randint(9, 30),
        "neg": lambda: -rng.randint(1, 10 ** 12),
        "float": lambda: rng.choice([1e308, -0.0, 1e-300, 0.5]),
        "str": lambda: rng.choice(["", "tiny", "../../etc/passwd", "\u202e", "<script>", "a\r\nb", "open"]),
        "long": lambda: "x" * rng.randint(1000, 100_000),
        "null": lambda: None,
        "bool": lambda: rng.random() < 0.5,
        "list": lambda: [nasty_json(rng, depth + 1) for _ in range(rng.randint(0, 4))],
        "obj": lambda: {rng.choice(["name", "base", "rows", "rank", "model", "prompt", "messages", "max_tokens", "n",
                                    "stop", "policy", "summary", "label", "allowance", "reason", "datanets",
                                    "max_steps", "epochs", "publish", "admin"]): nasty_json(rng, depth + 1)
                        for _ in range(rng.randint(0, 5))},
    }[k]()


def fuzz(srv, tokens, rounds, seed):
    print(f"fuzz: every OpenAPI route, {rounds} requests each (seed {seed})")
    rng = random.Random(seed)
    _, doc = srv.json("GET", "/api/v1/openapi.json")
    routes = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]
    routes += [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models")]
    who = [None, tokens["ann"], tokens["bob"], tokens["root"], "mrt_forged"]
    sent = 0
    for method, template in routes:
        for _ in range(rounds):
            path = template
            while "{" in path:
                a, b = path.index("{"), path.index("}")
                path = path[:a] + rng.choice(NASTY) + path[b + 1:]
            if rng.random() < 0.5:
                q = {rng.choice(["limit", "offset", "from", "index", "size", "old", "new", "subject", "status",
                                 "format", "version", "dry_run", "all", "contributor"]): rng.choice(NASTY)
                     for _ in range(rng.randint(1, 3))}
                path += "?" + "&".join(f"{k}={v}" for k, v in q.items())
            token = rng.choice(who)
            if method in ("POST", "PUT", "PATCH") and rng.random() < 0.8:
                if rng.random() < 0.8:
                    srv.request(method, path, token, body=nasty_json(rng))
                else:
                    srv.request(method, path, token, raw=bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512))),
                                headers={"Content-Type": rng.choice(["application/json", "multipart/form-data; boundary=x",
                                                                     "text/plain"])})
            else:
                srv.request(method, path, token)
            sent += 1
            if not srv.alive():
                fail(f"the server died on {method} {path}")
                return
    # The draft's name never reached anyone who may not see it.
    for path in ["/api/v1/ledger/entries?limit=1000", "/api/v1/datanets", "/api/v1/leaderboard"]:
        _, _, payload = srv.request("GET", path, tokens["bob"])
        check(SECRET_DRAFT.encode() not in payload, f"after fuzzing, {path} shows the draft to bob")
    print(f"fuzz: {sent} requests")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merit", default=os.path.join(ROOT, "target", "debug", "merit"))
    ap.add_argument("--rounds", type=int, default=12, help="fuzzed requests per route")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if not os.access(args.merit, os.X_OK):
        raise SystemExit(f"{args.merit} is not built (cargo build -p merit)")
    rate_limit(args.merit)
    srv, tokens = attacks(args.merit)
    try:
        fuzz(srv, tokens, args.rounds, args.seed)
        check(srv.alive(), "the server died")
    finally:
        srv.stop()
    if failures:
        print(f"\n{len(failures)} failures", file=sys.stderr)
        sys.exit(1)
    print("attack: every attack held")


if __name__ == "__main__":
    main()
