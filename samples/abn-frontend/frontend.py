"""A/B/n frontend: the Iter8 SDK sample, in Python, in front of model servers.

For each request it asks the A/B/n service which version the user (header X-User) gets
(Lookup), forwards the request to that version's backend (routes[version], routes[0] when
Lookup fails), and records a business metric for the user (WriteMetric, value X-Metric-Value,
default 1). The response carries the backend's status and body plus:
  x-abn-version  the index of the route used
  x-abn-lookup   ok | failed (failed: Lookup errored or named no route; routes[0] was used)
  x-abn-metric   ok | failed (WriteMetric is done before answering, so a client that got the
                 answer knows the metric was recorded)
GET /healthz answers 200 and GET /stats the counters (JSON); every other path is forwarded.

The stubs abn_pb2 and abn_pb2_grpc are generated from crates/abn/proto/abn.proto
(testenv/setup.sh does it: component abn-py). Run with --help for the options.
"""

import argparse
import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

import abn_pb2
import abn_pb2_grpc

log = logging.getLogger("abn-frontend")


def default_abn_address():
    host = os.environ.get("ABN_SERVICE")
    return f"{host}:{os.environ.get('ABN_SERVICE_PORT', '50051')}" if host else "127.0.0.1:50051"


class Frontend:
    def __init__(self, args):
        self.application, self.metric = args.application, args.metric
        self.routes = [r.strip().rstrip("/") for r in args.routes.split(",") if r.strip()]
        if not self.routes:
            raise SystemExit("--routes: at least one backend URL is needed")
        self.lookup_timeout, self.backend_timeout = args.lookup_timeout, args.backend_timeout
        self.stub = abn_pb2_grpc.ABNStub(grpc.insecure_channel(args.abn_address))
        self.lock = threading.Lock()
        self.stats = dict.fromkeys(
            ["requests", "lookup_failed", "write_failed", "backend_failed"], 0)

    def count(self, key):
        with self.lock:
            self.stats[key] += 1

    def lookup(self, user):
        """(route index, the Lookup answer or None when it failed or named no route)."""
        try:
            rec = self.stub.Lookup(abn_pb2.Application(name=self.application, user=user),
                                   timeout=self.lookup_timeout)
        except grpc.RpcError as e:
            log.warning("Lookup(%s, %r): %s: %s", self.application, user, e.code().name, e.details())
            return 0, None
        if 0 <= rec.versionNumber < len(self.routes):
            return rec.versionNumber, rec
        log.warning("Lookup(%s, %r) gave version %d: no such route", self.application, user,
                    rec.versionNumber)
        return 0, None

    def write_metric(self, user, value, rec):
        """WriteMetric, crediting the version Lookup gave (versionNumber and signature echoed);
        without an answer, the service credits the version it last gave this user."""
        mv = abn_pb2.MetricValue(name=self.metric, value=value, application=self.application,
                                 user=user)
        if rec is not None:
            mv.versionNumber, mv.signature = rec.versionNumber, rec.signature
        try:
            self.stub.WriteMetric(mv, timeout=self.lookup_timeout)
            return True
        except grpc.RpcError as e:
            self.count("write_failed")
            log.warning("WriteMetric(%s, %r, %s=%s): %s: %s", self.application, user, self.metric,
                        value, e.code().name, e.details())
            return False

    def forward(self, method, path, body, content_type, route):
        # A route with a path of its own is the whole target (e.g. the version's model
        # endpoint, as KServe names each version's model); else the request's path is appended.
        url = route if urllib.parse.urlsplit(route).path not in ("", "/") else route + path
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=self.backend_timeout) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type")
        except OSError as e:  # connection refused, timeout, ...
            self.count("backend_failed")
            log.warning("%s %s: %s", method, url, e)
            return 502, json.dumps({"error": f"backend {route}: {e}"}).encode(), "application/json"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    frontend: Frontend = None

    def do_GET(self):
        if self.path == "/healthz":
            return self.answer(200, b"ok\n", "text/plain")
        if self.path == "/stats":
            with self.frontend.lock:
                stats = dict(self.frontend.stats)
            return self.answer(200, json.dumps(stats).encode(), "application/json")
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    def do_PUT(self):
        self.handle_request()

    def handle_request(self):
        fe = self.frontend
        fe.count("requests")
        user = self.headers.get("X-User", "")
        idx, rec = fe.lookup(user)
        if rec is None:
            fe.count("lookup_failed")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        status, data, ctype = fe.forward(self.command, self.path, body,
                                         self.headers.get("Content-Type"), fe.routes[idx])
        value = self.headers.get("X-Metric-Value", "1")
        wrote = fe.write_metric(user, value, rec)
        self.answer(status, data, ctype, {
            "x-abn-version": str(idx),
            "x-abn-lookup": "ok" if rec is not None else "failed",
            "x-abn-metric": "ok" if wrote else "failed",
        })

    def answer(self, status, data, ctype, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8090, help="HTTP port (0: any free port)")
    p.add_argument("--abn-address", default=default_abn_address(),
                   help="A/B/n gRPC service (default $ABN_SERVICE:$ABN_SERVICE_PORT, "
                        "else 127.0.0.1:50051)")
    p.add_argument("--application", default=os.environ.get("ABN_APPLICATION", "default/backend"),
                   help='"namespace/name" of the application (default %(default)s)')
    p.add_argument("--routes", required=True,
                   help="comma-separated backend URLs by version index, e.g. "
                        "http://127.0.0.1:9001,http://127.0.0.1:9002 (the request's path is "
                        "appended to a URL without a path; a URL with a path is used as is)")
    p.add_argument("--metric", default="sample_metric", help="business metric name")
    p.add_argument("--lookup-timeout", type=float, default=1.0,
                   help="seconds for Lookup and WriteMetric")
    p.add_argument("--backend-timeout", type=float, default=30.0, help="seconds for the backend")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Handler.frontend = Frontend(args)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    # Tests read this line to learn the port.
    print(f"listening on {host}:{port}", flush=True)
    log.info("application %s, A/B/n service %s, routes %s", args.application, args.abn_address,
             Handler.frontend.routes)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
