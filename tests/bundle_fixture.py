"""A fixture CORE eval bundle (nanochat's layout) built at runtime, and a local HTTP server for it.

Used by tests/test_eval_bundle.py and tests/test_e2e.py. The server (http.server in a thread on
127.0.0.1) honours Range requests and has routes that misbehave on purpose:
`/flaky.zip` drops the first transfer halfway, `/corrupt.zip` serves damaged bytes,
`/missing.zip` answers 404, `/norange.zip` ignores Range.
"""

from __future__ import annotations

import io
import json
import random
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CORE_YAML = """\
icl_tasks:
- label: tiny_mc
  dataset_uri: reasoning/tiny_mc.jsonl
  num_fewshot: [1]
  icl_task_type: multiple_choice
  continuation_delimiter: "\\nAnswer: "
- label: tiny_lm
  dataset_uri: language/tiny_lm.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
  continuation_delimiter: " "
"""
META_CSV = (
    "Eval Task,Task Category,Task Type,#shots,Random baseline,Centered Metric?\n"
    "tiny_mc,reasoning,multiple_choice,1,25,\ntiny_lm,language,language_modeling,0,0,\n"
)


def make_bundle() -> bytes:
    """A zip in nanochat's layout with two synthetic tasks (random filler so it is not tiny)."""
    rng = random.Random(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("eval_bundle/core.yaml", CORE_YAML)
        zf.writestr("eval_bundle/eval_meta_data.csv", META_CSV)
        mc = [
            {"query": f"q{i} {rng.random():.9f}", "choices": ["a", "b", "c", "d"], "gold": i % 4}
            for i in range(400)
        ]
        lm = [{"context": f"count {i}", "continuation": str(i + 1)} for i in range(400)]
        zf.writestr(
            "eval_bundle/eval_data/reasoning/tiny_mc.jsonl",
            "".join(json.dumps(x) + "\n" for x in mc),
        )
        zf.writestr(
            "eval_bundle/eval_data/language/tiny_lm.jsonl",
            "".join(json.dumps(x) + "\n" for x in lm),
        )
    return buf.getvalue()


class BundleServer:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.dropped = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path == "/missing.zip":
                    self.send_error(404)
                    return
                body = server.payload
                if self.path == "/corrupt.zip":
                    body = body[:-100] + bytes(100)
                start = 0
                if rng and self.path != "/norange.zip":
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if self.path == "/flaky.zip" and not server.dropped:
                    server.dropped = True  # the first transfer stops halfway
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
