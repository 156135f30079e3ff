#!/usr/bin/env python3
"""Issue 8, finding 1, by hand: two concurrent ~870 KB submit bodies with 80,000 keys in
`candidate_metadata` and an unknown controller_id, and GET /health sent meanwhile.
Prints each answer's status and latency. Not a test (timings are noisy).

    quickcmd-agent --config agent.yaml &   # insecure_plain_http: true on 127.0.0.1
    scripts/bench-parse.py http://127.0.0.1:8443 [rounds]
"""
import http.client
import sys
import threading
import time
import urllib.parse


def bomb() -> bytes:
    keys = ",".join(f'"k{i}":0' for i in range(80_000))
    now = int(time.time())
    payload = (
        f'{{"job_id":"bomb","prompt":"","command":"true","candidate_metadata":{{{keys}}},'
        f'"snapshot_metadata":"","ttl":{now + 600},"timestamp":{now},"controller_id":"nobody"}}'
    )
    return (
        f'{{"payload":{payload},"signature":{{"signature":"{"0" * 64}",'
        f'"algorithm":"HMAC-SHA256"}}}}'
    ).encode()


def request(url, method, path, body=None):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    start = time.perf_counter()
    headers = {"content-type": "application/json"} if body else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return response.status, elapsed


def main():
    url = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    body = bomb()
    print(f"body: {len(body)} bytes")
    for round_ in range(rounds):
        results = {}

        def post(i):
            results[i] = request(url, "POST", "/api/v1/jobs", body)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.02)  # let both bodies arrive first
        health = request(url, "GET", "/health")
        for t in threads:
            t.join()
        posts = ", ".join(f"{s} in {e * 1000:.1f} ms" for s, e in results.values())
        print(f"round {round_}: health {health[0]} in {health[1] * 1000:.1f} ms; posts {posts}")


if __name__ == "__main__":
    main()
