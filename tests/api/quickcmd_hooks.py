"""Schemathesis hooks for the QuickCMD agent, and the seeding client of tests/api/schemathesis.sh.

Loaded by schemathesis through SCHEMATHESIS_HOOKS=quickcmd_hooks (with this directory on
PYTHONPATH). It lets the fuzzer past the agent's two signatures, so that the answers it
checks against docs/openapi.yaml are not only refusals:

- read auth: every request gets a fresh `Authorization: QuickCMD-HMAC-SHA256 ...` header
  signed over its method, its decoded path and the current time (the header is time-bound,
  so no static header would do);
- submissions: a generated body whose `payload` is an object is re-signed over the exact
  payload bytes sent; for every other one the payload is first made current (this
  controller, timestamp now, ttl in five minutes), so that they reach admission, the queue
  and the sandbox;
- job ids: reads of /api/v1/jobs/{id} ask about one of the seeded jobs (completed, failed,
  rejected, running) as often as about a generated id.

- versions: whatever docs/openapi.yaml marks `x-quickcmd-since: <v>` for a version listed
  in QUICKCMD_EXCLUDE_SINCE, and not `x-quickcmd-served: true` (what the agent already
  implements), (operations, parameters, properties) is taken out of the
  description before the run, so that an agent that predates it is held to the API it has.

Run as a script (`python quickcmd_hooks.py seed`) it submits those jobs and waits for them.
Configuration comes from the environment: QUICKCMD_URL, QUICKCMD_CA, QUICKCMD_CONTROLLER,
QUICKCMD_SECRET_FILE, QUICKCMD_SEEDED (file of seeded job ids, one a line).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CONTROLLER = os.environ.get("QUICKCMD_CONTROLLER", "fuzz-ctl")


def _secret() -> bytes:
    path = os.environ["QUICKCMD_SECRET_FILE"]
    with open(path, "rb") as handle:
        return handle.read().strip()


SECRET = _secret()


def sign(message: bytes) -> str:
    return hmac.new(SECRET, message, hashlib.sha256).hexdigest()


def read_auth(method: str, path: str) -> str:
    now = int(time.time())
    signature = sign(f"{method.upper()}\n{path}\n{now}".encode())
    return f"QuickCMD-HMAC-SHA256 controller_id={CONTROLLER},timestamp={now},signature={signature}"


def signed_body(payload: dict) -> bytes:
    """The body a controller sends: the payload's bytes and their HMAC, bytes as signed."""
    payload_bytes = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return (
        b'{"payload":' + payload_bytes + b',"signature":{"signature":"'
        + sign(payload_bytes).encode() + b'","algorithm":"HMAC-SHA256"}}'
    )


def _seeded() -> list[str]:
    path = os.environ.get("QUICKCMD_SEEDED")
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


try:
    import requests
    import schemathesis
    from hypothesis import strategies as st
except ImportError:  # seeding runs without schemathesis
    schemathesis = None

if schemathesis is not None:

    class ReadAuth(requests.auth.AuthBase):
        """Signs the request as it goes out: method, decoded path, now."""

        def __call__(self, request):
            path = urllib.parse.unquote(urllib.parse.urlsplit(request.url).path)
            request.headers["Authorization"] = read_auth(request.method, path)
            return request

    schemathesis.auth.set_from_requests(ReadAuth()).apply_to(
        path_regex="^/api/v1/(jobs/|stream/|jobs$|whoami$|audit/)", method=["GET", "DELETE"]
    )

    EXCLUDED_SINCE = set(os.environ.get("QUICKCMD_EXCLUDE_SINCE", "").split())

    def _strip_since(node):
        """Removes, in place, every operation, parameter and property marked with an
        excluded `x-quickcmd-since` version."""
        if isinstance(node, dict):
            for key in [k for k, v in node.items() if _excluded(v)]:
                del node[key]
            properties = node.get("properties")
            if isinstance(properties, dict):
                gone = [k for k, v in properties.items() if _excluded(v)]
                for key in gone:
                    del properties[key]
                if isinstance(node.get("required"), list):
                    node["required"] = [n for n in node["required"] if n not in gone]
            for value in node.values():
                _strip_since(value)
        elif isinstance(node, list):
            node[:] = [item for item in node if not _excluded(item)]
            for item in node:
                _strip_since(item)

    EXCLUDED_REFS: set[str] = set()

    def _excluded(node) -> bool:
        # `x-quickcmd-served: true` marks a later-version part this agent already serves.
        return isinstance(node, dict) and (
            (node.get("x-quickcmd-since") in EXCLUDED_SINCE and node.get("x-quickcmd-served") is not True)
            or node.get("$ref") in EXCLUDED_REFS
        )

    @schemathesis.hook
    def before_load_schema(context, raw_schema):
        components = raw_schema.get("components", {})
        for group in ("schemas", "parameters", "responses"):
            for name, component in components.get(group, {}).items():
                if _excluded(component):
                    EXCLUDED_REFS.add(f"#/components/{group}/{name}")
        paths = raw_schema.get("paths", {})
        _strip_since(paths)
        _strip_since(components)
        methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
        for path in [p for p, item in paths.items() if not methods & set(item)]:
            del paths[path]

    SEEDED = _seeded()

    @schemathesis.hook
    def flatmap_path_parameters(context, path_parameters):
        operation = context.operation
        # Only plain reads and cancels: a seeded id on the stream would upgrade to a
        # WebSocket, which the HTTP client cannot speak.
        if not SEEDED or operation is None or operation.path != "/api/v1/jobs/{id}":
            return st.just(path_parameters)
        return st.sampled_from(SEEDED + [path_parameters.get("id")] * len(SEEDED)).map(
            lambda job_id: {**path_parameters, "id": job_id}
        )

    _SUBMISSIONS = itertools.count()

    @schemathesis.hook
    def before_call(context, case, kwargs):
        operation = context.operation
        if operation is not None and operation.path == "/api/v1/stream/{id}":
            # The HTTP client cannot speak WebSocket: a 101 would leave it reading frames as
            # a response. `~` is in no job id, so the agent answers before the upgrade
            # (401, 400, 404) and every check up to the job lookup still runs.
            job_id = case.path_parameters.get("id") if case.path_parameters else None
            if isinstance(job_id, str):
                case.path_parameters["id"] = job_id + "~"
            return
        if operation is None or operation.path != "/api/v1/jobs" or case.method.upper() != "POST":
            return
        body = case.body
        if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
            return
        payload = dict(body["payload"])
        if next(_SUBMISSIONS) % 2 == 0:
            now = int(time.time())
            payload.update(controller_id=CONTROLLER, timestamp=now, ttl=now + 300)
        try:
            case.body = signed_body(payload)
        except ValueError:  # NaN or infinity: leave the generated body as it is
            return


# ---------------------------------------------------------------------------------------
# Seeding (run as a script)


def _request(method: str, path: str, body: bytes | None = None, auth: bool = False):
    url = os.environ["QUICKCMD_URL"] + path
    context = ssl.create_default_context(cafile=os.environ["QUICKCMD_CA"])
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = read_auth(method, path)
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def seed() -> None:
    now = int(time.time())
    run = f"{os.getpid()}-{now}"
    jobs = {
        f"seed-{run}-completed": ("echo hello; echo oops >&2; printf '\\377\\n'; exit 3", None, None),
        f"seed-{run}-timeout": ("sleep 30", {"timeout_seconds": 1}, None),
        f"seed-{run}-rejected": ("true", None, ["admin"]),
        f"seed-{run}-running": ("echo started; sleep 600", None, None),
    }
    for job_id, (command, sandbox, scopes) in jobs.items():
        payload = {
            "job_id": job_id, "prompt": "schemathesis seed", "command": command,
            "candidate_metadata": {}, "plugin_metadata": None, "required_scopes": scopes,
            "snapshot_metadata": "", "ttl": now + 900, "timestamp": now,
            "controller_id": CONTROLLER,
        }
        if sandbox is not None:
            payload["sandbox"] = sandbox
        status, answer = _request("POST", "/api/v1/jobs", signed_body(payload))
        expected = 403 if scopes else 202
        if status != expected:
            sys.exit(f"seed: submitting {job_id} answered {status} {answer}, expected {expected}")
    want = {
        f"seed-{run}-completed": {"completed"},
        f"seed-{run}-timeout": {"failed"},
        f"seed-{run}-rejected": {"rejected"},
        f"seed-{run}-running": {"running"},
    }
    deadline = time.monotonic() + 180
    for job_id, statuses in want.items():
        while True:
            status, answer = _request("GET", f"/api/v1/jobs/{job_id}", auth=True)
            if status == 200 and answer["status"] in statuses:
                break
            if time.monotonic() > deadline:
                sys.exit(f"seed: job {job_id} never became {statuses}: {status} {answer}")
            time.sleep(0.2)
    with open(os.environ["QUICKCMD_SEEDED"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(jobs) + "\n")
    print(f"seeded {len(jobs)} jobs: {', '.join(jobs)}")


if __name__ == "__main__" and sys.argv[1:] == ["seed"]:
    seed()
