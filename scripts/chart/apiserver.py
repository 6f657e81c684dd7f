"""A recording Kubernetes API endpoint for rendering the chart with Helm's install action.

helm-sdkpy has no `template` action, so the chart is rendered by a real `helm install` (the Helm
library, memory storage driver, no waiting) against this server, which keeps every object Helm
creates. It serves what Helm needs for that: `/version`, legacy discovery for the kinds the chart
can render, `get` (404 until created, so Helm finds no conflicting objects) and `create` (409 for
an existing name). Everything else is answered 405 and recorded, so a render that needed more
fails loudly instead of passing. It does not validate objects: `kubernetes-validate` does that.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (group, version, plural, kind, namespaced) of every kind the chart may render.
RESOURCES = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "services", "Service", True),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True),
]


def _group_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


class Recorder:
    """The objects Helm created, in order, and the requests it made that were refused."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.version = 0


def _discovery(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups: dict[str, list[str]] = {}
        for group, version, *_ in RESOURCES:
            if group and version not in groups.setdefault(group, []):
                groups[group].append(version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in groups.items()
            ],
        }
    parts = path.strip("/").split("/")
    if parts == ["api", "v1"]:
        group, version = "", "v1"
    elif len(parts) == 3 and parts[0] == "apis":
        group, version = parts[1], parts[2]
    else:
        return None
    resources = [
        {
            "name": plural,
            "singularName": kind.lower(),
            "namespaced": namespaced,
            "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }
        for g, v, plural, kind, namespaced in RESOURCES
        if (g, v) == (group, version)
    ]
    if not resources:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": _group_version(group, version),
        "resources": resources,
    }


def _object_path(path: str) -> tuple[str, str, str, str, str] | None:
    """(group/version, namespace, plural, name, kind) of a resource path, or None."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) >= 2:
        gv, rest = parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 2:
        return None
    plural = rest[0]
    name = rest[1] if len(rest) == 2 else ""
    for g, v, p, kind, _ in RESOURCES:
        if _group_version(g, v) == gv and p == plural:
            return gv, namespace, plural, name, kind
    return None


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self) -> None:
            with recorder.lock:
                recorder.refused.append(f"{self.command} {self.path}")
            self._send(405, _status(405, "MethodNotAllowed", f"{self.command} {self.path} is not served"))

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/version":
                self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
                return
            doc = _discovery(path)
            if doc is not None:
                self._send(200, doc)
                return
            target = _object_path(path)
            if target is None or not target[3]:
                self._refuse()
                return
            gv, namespace, plural, name, _ = target
            with recorder.lock:
                obj = recorder.objects.get((gv, namespace, plural, name))
            if obj is None:
                self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            else:
                self._send(200, obj)

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            target = _object_path(path)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                obj = json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError:
                obj = None
            if target is None or target[3] or not isinstance(obj, dict):
                self._refuse()
                return
            gv, namespace, plural, _, _ = target
            meta = obj.setdefault("metadata", {})
            if namespace:
                meta["namespace"] = namespace
            key = (gv, namespace, plural, meta.get("name", ""))
            with recorder.lock:
                if key in recorder.objects:
                    self._send(409, _status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists'))
                    return
                recorder.version += 1
                recorded = json.loads(json.dumps(obj))
                recorder.created.append(recorded)
                meta.update(
                    uid=str(uuid.uuid4()),
                    resourceVersion=str(recorder.version),
                    creationTimestamp="2026-01-01T00:00:00Z",
                )
                recorder.objects[key] = obj
            self._send(201, obj)

        do_PUT = _refuse
        do_PATCH = _refuse
        do_DELETE = _refuse

    return Handler


class ApiServer:
    """Started on a free port of 127.0.0.1; `stop()` shuts it down."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.recorder))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, namespace: str) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "render", "cluster": {"server": self.url}}],
                "users": [{"name": "render", "user": {}}],
                "contexts": [
                    {"name": "render", "context": {"cluster": "render", "user": "render", "namespace": namespace}}
                ],
                "current-context": "render",
            }
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
