#!/usr/bin/env python3
"""Minimal QuickCMD controller for the install tests (protocol-v1): signs a job with
HMAC-SHA256 over the exact payload bytes, submits it, and reads jobs back with the
QuickCMD-HMAC-SHA256 read auth. Standard library only, so it runs in a bare Debian.

Every command prints one JSON object: {"http": <status or 0>, "body": <parsed body>}.
"""

import argparse
import hashlib
import hmac
import json
import re
import ssl
import sys
import time
import urllib.error
import urllib.request

FINAL = {"completed", "failed", "rejected"}


def secret_from(args):
    if args.secret:
        return args.secret
    with open(args.config, encoding="utf-8") as f:
        for line in f:
            m = re.match(r'^hmac_secret:\s*"?([^"\s#]+)"?', line)
            if m:
                return m.group(1)
    sys.exit(f"qc-client: no top-level hmac_secret in {args.config}")


def request(args, method, path, body=None, headers=None):
    context = ssl.create_default_context(cafile=args.cacert)
    req = urllib.request.Request(args.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=args.http_timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return {"http": 0, "body": {"error": str(e)}}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return {"http": status, "body": parsed}


def submit(args):
    now = int(time.time())
    payload = {
        "job_id": args.job_id,
        "prompt": "install test",
        "command": args.command,
        "candidate_metadata": {},
        "plugin_metadata": {},
        "required_scopes": [],
        "snapshot_metadata": "",
        "ttl": now + args.ttl,
        "timestamp": now,
        "controller_id": args.controller,
    }
    sandbox = {}
    if args.image:
        sandbox["image"] = args.image
    if args.timeout_seconds:
        sandbox["timeout_seconds"] = args.timeout_seconds
    if sandbox:
        payload["sandbox"] = sandbox
    payload_bytes = json.dumps(payload, separators=(",", ":")).encode()
    signature = hmac.new(secret_from(args).encode(), payload_bytes, hashlib.sha256).hexdigest()
    body = (
        b'{"payload":' + payload_bytes
        + b',"signature":{"signature":"' + signature.encode() + b'","algorithm":"HMAC-SHA256"}}'
    )
    return request(args, "POST", "/api/v1/jobs", body, {"Content-Type": "application/json"})


def get(args):
    path = f"/api/v1/jobs/{args.job_id}"
    ts = str(int(time.time()))
    message = f"GET\n{path}\n{ts}".encode()
    signature = hmac.new(secret_from(args).encode(), message, hashlib.sha256).hexdigest()
    auth = f"QuickCMD-HMAC-SHA256 controller_id={args.controller},timestamp={ts},signature={signature}"
    return request(args, "GET", path, None, {"Authorization": auth})


def wait(args):
    """Polls until the job reaches --until (a status) or any final status; bounded."""
    deadline = time.time() + args.wait_seconds
    last = None
    while time.time() < deadline:
        last = get(args)
        status = last["body"].get("status") if isinstance(last["body"], dict) else None
        if status == args.until or status in FINAL:
            return last
        time.sleep(0.3)
    if last is None:
        last = {"http": 0, "body": {}}
    last["timed_out"] = True
    return last


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("verb", choices=["submit", "get", "wait"])
    p.add_argument("--url", default="https://127.0.0.1:8443")
    p.add_argument("--cacert", default="/etc/quickcmd/agent-cert.pem")
    p.add_argument("--config", default="/etc/quickcmd/agent-config.yaml")
    p.add_argument("--secret")
    p.add_argument("--controller", default="controller-1")
    p.add_argument("--job-id", required=True)
    p.add_argument("--command", default="echo hi")
    p.add_argument("--image")
    p.add_argument("--timeout-seconds", type=int)
    p.add_argument("--ttl", type=int, default=600)
    p.add_argument("--until", default="")
    p.add_argument("--wait-seconds", type=float, default=60)
    p.add_argument("--http-timeout", type=float, default=10)
    args = p.parse_args()
    result = {"submit": submit, "get": get, "wait": wait}[args.verb](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
