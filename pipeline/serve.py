"""A static file server on loopback that can be told to misbehave: for the demo corpus and the tests.

Paths under /fault/ misbehave on purpose:
  /fault/500/NAME        always 500              /fault/flaky/NAME    500 twice, then the file
  /fault/slow/NAME       stalls before the body  /fault/truncate/NAME  sends half the bytes, then drops
  /fault/html/NAME       an HTML page as video/mp4  /fault/loop/N      redirects forever
  /fault/redirect/NAME   302 -> /NAME            /fault/noai/NAME     X-Robots-Tag: noai
  /fault/hang/NAME       headers, then silence  /fault/drip/NAME      the file, one byte a second
  /fault/splice/NAME     drops halfway, then answers the Range retry with a 206 of the whole file
  /fault/partial/NAME    206 Partial Content to a plain GET
  /fault/endless/NAME    the file's first bytes, then zeros forever (chunked)
  /fault/bomb/N          gzip of N MiB of zeros, Content-Encoding: gzip
  /fault/fakegzip/NAME   the file as it is, labelled Content-Encoding: gzip
  /fault/to-file/X       302 -> file:///etc/passwd   /fault/to-ftp/X  302 -> ftp://127.0.0.1/x.mp4
Any path accepts a query string and ignores it (signed-URL style tests).
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    root: Path
    hits: Counter
    slow_s: float = 0.0

    def log_message(self, *args):  # quiet
        pass

    def _file(self, name: str) -> Path | None:
        p = (self.root / name).resolve()
        return p if p.is_file() and self.root in p.parents else None

    def _send_file(self, p: Path, headers: dict[str, str] | None = None, truncate: bool = False) -> None:
        data = p.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a or 0)
            end = int(b) if b else len(data) - 1
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:end + 1]
            status = 206
        else:
            body = data
        self.send_response(status)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if truncate and len(body) > 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _drip(self, p: Path) -> None:
        """Never stalls long enough for a read timeout, never finishes in useful time."""
        data = p.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(1.0)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up
            self.close_connection = True

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on purpose (a refused 206)
            self.close_connection = True

    def _endless(self, p: Path) -> None:
        """A media file's start, then zeros until the client hangs up: only a size cap ends it."""
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = bytes(1 << 16)
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (4096, p.read_bytes()[:4096]))
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _misbehave(self, kind: str, name: str, n: int) -> bool:
        """The faults added for hostile-input round two; True when one answered."""
        if kind in ("to-file", "to-ftp"):
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd" if kind == "to-file" else "ftp://127.0.0.1/x.mp4")
            self.end_headers()
            return True
        if kind == "bomb":
            self._send(200, gzip.compress(bytes(int(name) << 20), 1), {"Content-Type": "video/mp4",
                                                                      "Content-Encoding": "gzip"})
            return True
        p = self._file(name)
        if p is None or kind not in ("splice", "partial", "endless", "fakegzip"):
            return False
        data = p.read_bytes()
        if kind == "endless":
            self._endless(p)
        elif kind == "fakegzip":
            self._send(200, data, {"Content-Type": "video/mp4", "Content-Encoding": "gzip"})
        elif kind == "partial" or (kind == "splice" and "Range" in self.headers):
            # the whole file, as if from the offset asked (a broken cache or proxy)
            self._send(206, data, {"Content-Type": "video/mp4", "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
        elif n == 1:  # splice, first plain GET: half the bytes, then the connection drops
            self._send_file(p, truncate=True)
        else:
            self._send_file(p)
        return True

    def do_GET(self):  # noqa: N802
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        self.hits[self.path] += 1
        if parts[:1] == ["fault"] and len(parts) >= 3:
            kind, name = parts[1], "/".join(parts[2:])
            n = self.hits[self.path]
            if self._misbehave(kind, name, n):
                return
            if kind == "500" or (kind == "flaky" and n <= 2):
                self.send_error(500, "server error on purpose")
                return
            if kind == "loop":
                self.send_response(302)
                self.send_header("Location", f"/fault/loop/{int(parts[2]) + 1}")
                self.end_headers()
                return
            if kind == "redirect":
                self.send_response(302)
                self.send_header("Location", f"/{name}")
                self.end_headers()
                return
            if kind == "html":
                body = b"<!DOCTYPE html><html><body>Not the video you wanted</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if kind == "hang":
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                time.sleep(3600)
                return
            p = self._file(name)
            if p is None:
                self.send_error(404)
                return
            if kind == "drip":
                self._drip(p)
                return
            if kind == "slow":
                time.sleep(self.slow_s)
            if kind == "noai":
                self._send_file(p, {"X-Robots-Tag": "noai, noimageai"})
                return
            self._send_file(p, truncate=(kind == "truncate" and "Range" not in self.headers))
            return
        p = self._file("/".join(parts))
        if p is None:
            self.send_error(404)
            return
        self._send_file(p)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-body (a download that stops at its size limit, a sniffer that read
    enough) is the client's choice, not a server error: no traceback for it. Other errors print."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError, ...
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """`with LoopbackServer(folder) as srv: srv.url("file.mp4")`."""

    def __init__(self, root: str | Path, port: int = 0, slow_s: float = 2.0):
        handler = type("Handler", (_Handler,), {"root": Path(root).resolve(), "hits": Counter(), "slow_s": slow_s})
        self.hits = handler.hits
        self.httpd = _QuietServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
