#!/usr/bin/env python3
"""A stand-in Kubernetes API server on 127.0.0.1 for `kubectl apply --dry-run=client`.

`kubectl apply --dry-run=client` still talks to a server: it maps each object's apiVersion and
kind to a resource through discovery (/api, /apis, /apis/<group>/<version>) and GETs the object to
decide between create and patch. Without a cluster both fail, whatever the flags. This server
answers exactly that and nothing more:

- discovery for the core group (namespaces only), apiextensions.k8s.io/v1
  (customresourcedefinitions) and every group, version and kind that the CRD files given on the
  command line serve, with their plural, singular, short names and scope. So an example whose
  apiVersion or kind the CRD does not serve fails with "no matches for kind", as on a cluster
  where the CRD is installed;
- 404 NotFound for every object, as an empty cluster would: apply then prints "created (dry run)";
- /openapi/v2 and /openapi/v3 404 (kubectl is run with --validate=false: the schema checks are
  scripts/charts/check_examples.py's and kubernetes-validate's).

A request that would change anything (any method but GET) is answered 405 and logged as WRITE:
with --dry-run=client there must be none, and scripts/dev fails the check when the log has one.
It listens on a free loopback port, writes the port to --port-file, logs every request to --log
and exits by itself after --lifetime seconds.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from crds import served_versions

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def load_groups(crd_files):
    """{group: {version: [APIResource]}} for the built-in groups kubectl needs and the CRDs."""
    groups = {
        "apiextensions.k8s.io": {
            "v1": [{
                "name": "customresourcedefinitions", "singularName": "customresourcedefinition",
                "namespaced": False, "kind": "CustomResourceDefinition", "verbs": VERBS,
                "shortNames": ["crd", "crds"], "categories": ["api-extensions"],
            }],
        },
    }
    for _, spec, version in served_versions(crd_files):
        names = spec["names"]
        resources = groups.setdefault(spec["group"], {}).setdefault(version["name"], [])
        if any(r["name"] == names["plural"] for r in resources):
            continue  # the same CRD from another file (the chart's copy)
        resources.append({
            "name": names["plural"], "singularName": names.get("singular", ""),
            "namespaced": spec["scope"] == "Namespaced", "kind": names["kind"],
            "verbs": VERBS, "shortNames": names.get("shortNames", []),
            "categories": names.get("categories", []),
        })
        for sub in (version.get("subresources") or {}):
            resources.append({
                "name": f"{names['plural']}/{sub}", "singularName": "",
                "namespaced": spec["scope"] == "Namespaced", "kind": names["kind"],
                "verbs": ["get", "patch", "update"],
            })
    return groups


def make_handler(groups, log):
    core = [{"name": "namespaces", "singularName": "namespace", "namespaced": False,
             "kind": "Namespace", "verbs": VERBS, "shortNames": ["ns"]}]

    def group_entry(name, versions):
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # the request log goes to --log, not stderr
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def not_found(self):
            self.reply(404, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Failure", "reason": "NotFound", "code": 404,
                             "message": f"{self.path} not found (stub API server: an empty cluster)"})

        def do_GET(self):
            log(f"GET {self.path}")
            path = self.path.split("?", 1)[0].rstrip("/")
            parts = path.split("/")[1:]
            if path == "/version":
                self.reply(200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0-stub",
                                 "platform": "linux/amd64"})
            elif path == "/api":
                self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                 "serverAddressByClientCIDRs": []})
            elif path == "/api/v1":
                self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                 "groupVersion": "v1", "resources": core})
            elif path == "/apis":
                self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1",
                                 "groups": [group_entry(g, list(vs)) for g, vs in groups.items()]})
            elif len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], {}):
                self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                 "groupVersion": f"{parts[1]}/{parts[2]}",
                                 "resources": groups[parts[1]][parts[2]]})
            else:
                self.not_found()

        def refuse(self):
            log(f"WRITE {self.command} {self.path}")
            self.reply(405, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Failure", "reason": "MethodNotAllowed", "code": 405,
                             "message": "stub API server: a client-side dry run must not write"})

        do_POST = do_PUT = do_PATCH = do_DELETE = refuse

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("crds", nargs="+", help="CustomResourceDefinition YAML files")
    args = parser.parse_args()

    groups = load_groups(args.crds)
    lock = threading.Lock()
    log_file = open(args.log, "a", encoding="utf-8", buffering=1)

    def log(line):
        with lock:
            log_file.write(line + "\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(groups, log))
    server.daemon_threads = True
    # Bounded: the server stops by itself even if nobody stops it.
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    with open(args.port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
