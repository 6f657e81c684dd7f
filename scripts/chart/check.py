"""Checks of the Helm chart `charts/serin`, run by scripts/check-chart.sh.

1. The chart's `crds/` equal the repository's `crds/`, file by file.
2. `helm lint` (the Helm library from helm-sdkpy) finds no warning or error.
3. The chart renders (a real `helm install` against scripts/chart/apiserver.py, memory driver) with
   its defaults and with the value sets of SCENARIOS; bad values are refused, naming the value.
4. Every rendered object validates with kubernetes-validate in strict mode, against the oldest
   Kubernetes version the chart supports and the newest one kubernetes-validate knows.
5. What no schema checks: selectors match pod labels, ports and probes name real container ports,
   bindings name the rendered roles and service accounts, every container runs hardened.
6. Behaviour: the flags and environment each value set gives the controller and load tester.
7. The Grafana dashboard is valid JSON in a ConfigMap labelled for the sidecar, and every series
   it queries is one the controller exports (src/controller/telemetry.rs).
8. The chart README lists every value of values.yaml and exactly the RBAC rules the chart grants.

Prints one line per check; exits 1 when any check failed, saying which and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apiserver import ApiServer  # noqa: E402

RELEASE = "serin"
NAMESPACE = "serin-system"
LEASE_NAME = "serin-leader-election"
IRSA = "arn:aws:iam::123456789012:role/serin-controller"

failures: list[str] = []
checks = 0


def check(ok: bool, what: str, why: str = "") -> bool:
    """Records one check; prints it."""
    global checks
    checks += 1
    if ok:
        print(f"  ok   {what}")
    else:
        failures.append(f"{what}: {why}" if why else what)
        print(f"  FAIL {what}" + (f": {why}" if why else ""))
    return ok


# ---- 1. CRDs ------------------------------------------------------------------------------------


def check_crds(chart: Path, crds: Path) -> None:
    print(f"CRDs: {chart / 'crds'} against {crds}")
    ours = {p.name: p.read_bytes() for p in sorted((chart / "crds").glob("*.yaml"))}
    theirs = {p.name: p.read_bytes() for p in sorted(crds.glob("*.yaml"))}
    check(bool(theirs), f"{crds} holds CRDs", "no *.yaml found")
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    check(not missing, "every CRD of crds/ is in the chart", f"missing {missing}; copy crds/*.yaml into {chart}/crds/")
    check(not extra, "the chart has no CRD that crds/ lacks", f"extra {extra}; remove them from {chart}/crds/")
    for name in sorted(set(ours) & set(theirs)):
        check(
            ours[name] == theirs[name],
            f"crds/{name} is identical in the chart",
            f"differs; run: cp crds/*.yaml {chart}/crds/",
        )


# ---- 2. lint ------------------------------------------------------------------------------------


def lint(helm: Any, chart: Path) -> None:
    print(f"helm lint {chart}")
    result = asyncio.run(helm.Lint(helm.Configuration(namespace=NAMESPACE)).run(str(chart)))
    severities = {1: "INFO", 2: "WARNING", 3: "ERROR"}
    bad = []
    for m in result.get("Messages") or []:
        severity = m.get("Severity", 0)
        err = m.get("Err")
        # helm-sdkpy passes some messages on as empty objects: the render below shows errors.
        text = err if isinstance(err, str) and err else "(no text from the Helm library)"
        line = f"[{severities.get(severity, severity)}] {m.get('Path')}: {text}"
        if severity >= 2:
            bad.append(line)
        else:
            print(f"       {line}")
    check(not bad, "helm lint: no warning or error", "; ".join(bad))


# ---- 3. render ----------------------------------------------------------------------------------


class RenderError(Exception):
    pass


def render(helm: Any, chart: Path, values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The objects `helm install` creates with these values, and the release notes."""
    server = ApiServer()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
            f.write(server.kubeconfig(NAMESPACE))
            kubeconfig = f.name
        try:
            config = helm.Configuration(namespace=NAMESPACE, kubeconfig=kubeconfig)
            install = helm.Install(config)
            try:
                release = asyncio.run(
                    install.run(RELEASE, str(chart), values=values or None, wait=False, timeout=60)
                )
            except Exception as e:  # the Helm library raises its own error types
                raise RenderError(str(e)) from e
        finally:
            os.unlink(kubeconfig)
        if server.recorder.refused:
            raise RenderError(f"Helm made requests the render server does not serve: {server.recorder.refused}")
        return server.recorder.created, release.get("info", {}).get("notes", "")
    finally:
        server.stop()


# ---- helpers over rendered objects --------------------------------------------------------------


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def ident(o: dict[str, Any]) -> str:
    ns = o["metadata"].get("namespace")
    return f"{o['kind']} {ns + '/' if ns else ''}{o['metadata']['name']}"


def container(deploy: dict[str, Any], name: str) -> dict[str, Any]:
    for c in deploy["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"{ident(deploy)} has no container {name}")


def args_of(c: dict[str, Any]) -> list[str]:
    return [str(a) for a in c.get("args", [])]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def subset(small: dict[str, str], big: dict[str, str]) -> bool:
    return all(big.get(k) == v for k, v in small.items())


# ---- 4. schemas ---------------------------------------------------------------------------------


def validate_schemas(kv: Any, scenario: str, objs: list[dict[str, Any]], versions: list[str]) -> None:
    for o in objs:
        if o["kind"] == "ServiceMonitor":
            continue  # kubernetes-validate has no schema for it; check_wiring checks its fields
        errors = []
        for version in versions:
            try:
                kv.validate(o, version, strict=True)
            except kv.SchemaNotFoundError:
                errors.append(f"Kubernetes {version} has no {o['apiVersion']} {o['kind']}")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"Kubernetes {version}: {path}: {e.message}")
        check(not errors, f"[{scenario}] {ident(o)} validates (strict, Kubernetes {' and '.join(versions)})", "; ".join(errors))


# ---- 5. wiring and hardening --------------------------------------------------------------------


def check_wiring(scenario: str, objs: list[dict[str, Any]], existing: set[tuple[str, str]]) -> None:
    """`existing`: service accounts (namespace, name) the values say exist already."""
    deployments = find(objs, "Deployment")
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in find(objs, "ServiceAccount")} | existing
    for d in deployments:
        spec = d["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        ns = d["metadata"]["namespace"]
        check(
            subset(spec["selector"]["matchLabels"], labels),
            f"[{scenario}] {ident(d)}: selector matches its pod labels",
            f"{spec['selector']['matchLabels']} vs {labels}",
        )
        sa = pod.get("serviceAccountName", "default")
        check(
            (ns, sa) in accounts,
            f"[{scenario}] {ident(d)}: service account {sa} is rendered in {ns} (or exists by the values)",
            f"rendered: {sorted(accounts)}",
        )
        psc = pod.get("securityContext", {})
        check(
            psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"[{scenario}] {ident(d)}: seccomp profile RuntimeDefault",
            f"pod securityContext {psc}",
        )
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            where = f"[{scenario}] {ident(d)} container {c['name']}"
            check(
                sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
                and sc.get("runAsUser", psc.get("runAsUser", 0)) != 0,
                f"{where}: runs as non-root",
                f"securityContext {sc}, pod {psc}",
            )
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: read-only root filesystem", f"{sc}")
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation", f"{sc}")
            check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: drops all capabilities", f"{sc}")
            check(not sc.get("privileged", False), f"{where}: not privileged", f"{sc}")
            res = c.get("resources", {})
            check(
                all(k in res.get(part, {}) for part in ("requests", "limits") for k in ("cpu", "memory")),
                f"{where}: cpu and memory requests and limits",
                f"resources {res}",
            )
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                get = c.get(probe, {}).get("httpGet")
                ok = get is not None and (get["port"] in ports or get["port"] in ports.values())
                check(ok, f"{where}: {probe} is an HTTP check on a container port", f"{c.get(probe)} vs ports {ports}")
    for s in find(objs, "Service"):
        ns = s["metadata"]["namespace"]
        backing = [
            d
            for d in deployments
            if d["metadata"]["namespace"] == ns and subset(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        if not check(len(backing) == 1, f"[{scenario}] {ident(s)}: selects the pods of one rendered Deployment", f"selects {len(backing)}"):
            continue
        names = {p.get("name") for c in backing[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in names, f"[{scenario}] {ident(s)}: port {p['name']} targets a named container port", f"{p['targetPort']} not in {names}")
    services = find(objs, "Service")
    for m in find(objs, "ServiceMonitor"):
        spec = m["spec"]
        matched = [
            s
            for s in services
            if s["metadata"]["namespace"] in spec.get("namespaceSelector", {}).get("matchNames", [m["metadata"]["namespace"]])
            and subset(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        ok = len(matched) == 1
        check(ok, f"[{scenario}] {ident(m)}: selects the metrics Service", f"selects {[ident(s) for s in matched]}")
        if ok:
            ports = {p["name"] for p in matched[0]["spec"]["ports"]}
            for e in spec["endpoints"]:
                check(e.get("port") in ports, f"[{scenario}] {ident(m)}: endpoint port {e.get('port')} is a Service port", f"ports {ports}")
                check(e.get("path") == "/metrics", f"[{scenario}] {ident(m)}: scrapes /metrics", f"path {e.get('path')}")
                check(e.get("honorLabels") is True, f"[{scenario}] {ident(m)}: keeps the series' own namespace label (honorLabels)", f"{e}")
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] in ("Role", "ClusterRole")}
    for b in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding"):
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        check((ref["kind"], ns, ref["name"]) in roles, f"[{scenario}] {ident(b)}: binds a rendered {ref['kind']}", f"{ref} not rendered")
        for s in b["subjects"]:
            check(
                s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) in accounts,
                f"[{scenario}] {ident(b)}: subject {s['name']} is the rendered service account",
                f"{s}",
            )


def rules_of(objs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(group, resource, verb, resourceName or '') granted by the rendered roles."""
    out = set()
    for r in find(objs, "Role") + find(objs, "ClusterRole"):
        for rule in r.get("rules", []):
            for g in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        for n in rule.get("resourceNames", [""]):
                            out.add((g, res, v, n))
    return out


# ---- 6. scenarios: values and what they must do ------------------------------------------------


def expect_defaults(objs: list[dict[str, Any]], notes: str) -> None:
    s = "defaults"
    kinds = sorted(ident(o) for o in objs)
    expected = sorted(
        [
            "CustomResourceDefinition alertproviders.serin.dev",
            "CustomResourceDefinition canaries.serin.dev",
            "CustomResourceDefinition metrictemplates.serin.dev",
            f"ServiceAccount {NAMESPACE}/serin",
            "ClusterRole serin",
            "ClusterRoleBinding serin",
            f"Role {NAMESPACE}/serin-leader-election",
            f"RoleBinding {NAMESPACE}/serin-leader-election",
            f"Deployment {NAMESPACE}/serin",
            f"Service {NAMESPACE}/serin",
            f"ConfigMap {NAMESPACE}/serin-dashboard",
        ]
    )
    check(kinds == expected, f"[{s}] renders exactly the controller's objects", f"got {kinds}")
    d = one(objs, "Deployment", "serin")
    check(d["spec"]["replicas"] == 2, f"[{s}] two controller replicas", f"replicas {d['spec']['replicas']}")
    c = container(d, "controller")
    a = args_of(c)
    check(a[:1] == ["controller"], f"[{s}] runs `serin controller`", f"args {a}")
    for flag in ("--leader-election=true", f"--leader-election-namespace={NAMESPACE}", "--log-format=json",
                 "--metrics-server=http://prometheus:9090", "--provider=appmesh:v1beta2", "--listen=0.0.0.0:8080"):
        check(flag in a, f"[{s}] controller flag {flag}", f"args {a}")
    check(not any(x.startswith("--namespace") for x in a), f"[{s}] watches every namespace (no --namespace)", f"args {a}")
    env = env_of(c)
    check(env.get("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}, f"[{s}] POD_NAME from the downward API", f"{env.get('POD_NAME')}")
    check(env.get("POD_NAMESPACE") == {"fieldRef": {"fieldPath": "metadata.namespace"}}, f"[{s}] POD_NAMESPACE from the downward API", f"{env.get('POD_NAMESPACE')}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("http-metrics") == 8080, f"[{s}] the metrics port is the --listen port", f"ports {ports}")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"[{s}] liveness probe on /healthz", f"{c['livenessProbe']}")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"[{s}] readiness probe on /readyz", f"{c['readinessProbe']}")
    ru = d["spec"].get("strategy", {}).get("rollingUpdate", {})
    check(
        ru.get("maxUnavailable") == 0 and ru.get("maxSurge") == 1,
        f"[{s}] a rolling update keeps every old pod until a new one is ready (standbys are ready)",
        f"strategy {d['spec'].get('strategy')}",
    )
    lease = rules_of(find(objs, "Role", "serin-leader-election"))
    check(
        lease == {("coordination.k8s.io", "leases", "create", ""),
                  ("coordination.k8s.io", "leases", "get", LEASE_NAME),
                  ("coordination.k8s.io", "leases", "update", LEASE_NAME)},
        f"[{s}] the leader-election Role allows only creating, reading and renewing Serin's Lease",
        f"{sorted(lease)}",
    )
    cm = one(objs, "ConfigMap", "serin-dashboard")
    check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"[{s}] the dashboard ConfigMap has the sidecar label grafana_dashboard: \"1\"", f"{cm['metadata']['labels']}")
    check("serin.serin-system:8080/metrics" in notes, f"[{s}] the release notes say where the metrics are", notes)


def expect_namespaced(objs: list[dict[str, Any]], notes: str, cluster_rules: set[tuple[str, str, str, str]]) -> None:
    s = "namespaced"
    check(not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding"), f"[{s}] no cluster-wide RBAC with watchNamespace", f"{[ident(o) for o in find(objs, 'ClusterRole')]}")
    role = find(objs, "Role", "serin")
    check(len(role) == 1 and role[0]["metadata"]["namespace"] == "apps", f"[{s}] the controller's Role is in the watched namespace", f"{[ident(o) for o in role]}")
    check(rules_of(role) == cluster_rules, f"[{s}] the Role grants what the ClusterRole grants, no more", f"{sorted(rules_of(role) ^ cluster_rules)}")
    lease_role = find(objs, "Role", "serin-leader-election")
    check(len(lease_role) == 1 and lease_role[0]["metadata"]["namespace"] == "serin-leases", f"[{s}] the Lease Role is in leaderElection.namespace", f"{[ident(o) for o in lease_role]}")
    c = container(one(objs, "Deployment", "serin"), "controller")
    a = args_of(c)
    for flag in ("--namespace=apps", "--leader-election-namespace=serin-leases", "--log-format=text",
                 "--cluster-name=prod-eu-1", "--metrics-server=https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1",
                 "--provider=gatewayapi:v1", "--listen=0.0.0.0:9000"):
        check(flag in a, f"[{s}] controller flag {flag}", f"args {a}")
    check({p["containerPort"] for p in c["ports"]} == {9000}, f"[{s}] port 9000 is the container port", f"{c['ports']}")
    sa = one(objs, "ServiceAccount", "serin")
    check(sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn") == IRSA, f"[{s}] the IRSA role annotation is on the controller's ServiceAccount", f"{sa['metadata']}")
    sm = find(objs, "ServiceMonitor", "serin")
    check(len(sm) == 1 and sm[0]["metadata"]["labels"].get("release") == "kube-prometheus-stack", f"[{s}] the ServiceMonitor carries the labels Prometheus selects", f"{[o['metadata'] for o in sm]}")
    cm = find(objs, "ConfigMap", "serin-dashboard")
    check(len(cm) == 1 and cm[0]["metadata"]["namespace"] == "monitoring" and cm[0]["metadata"].get("annotations", {}).get("grafana_folder") == "Serin",
          f"[{s}] the dashboard goes to dashboard.namespace with its annotations", f"{[o['metadata'] for o in cm]}")
    lt = find(objs, "Deployment", "serin-loadtester")
    if check(len(lt) == 1 and lt[0]["metadata"]["namespace"] == "test", f"[{s}] the load tester Deployment is in loadtester.namespace", f"{[ident(o) for o in lt]}"):
        lc = container(lt[0], "loadtester")
        la = args_of(lc)
        for flag in ("--port=8080", "--allow-cmd=curl", "--allow-cmd=grep", "--namespace=test", "--timeout=10m", "--max-tasks=4"):
            check(flag in la, f"[{s}] load tester flag {flag}", f"args {la}")
        check(la[:1] == ["loadtester"], f"[{s}] runs `serin loadtester`", f"args {la}")
        pod = lt[0]["spec"]["template"]["spec"]
        check(pod.get("automountServiceAccountToken") is False, f"[{s}] the load tester gets no API token by default", f"{pod.get('automountServiceAccountToken')}")
        mounts = {m["mountPath"] for m in lc.get("volumeMounts", [])}
        check("/tmp" in mounts, f"[{s}] the load tester has a writable /tmp for commands", f"mounts {mounts}")
        check(lc["image"] == "ghcr.io/serin-dev/serin:0.1.0", f"[{s}] the load tester uses the controller image by default", lc["image"])
    svc = find(objs, "Service", "serin-loadtester")
    check(len(svc) == 1 and svc[0]["spec"]["ports"][0]["port"] == 80, f"[{s}] the load tester Service answers on port 80 (http://serin-loadtester.test/)", f"{[o['spec'] for o in svc]}")
    check("http://serin-loadtester.test/" in notes, f"[{s}] the release notes give the load tester's URL", notes)


def expect_single(objs: list[dict[str, Any]], notes: str) -> None:
    s = "single"
    d = one(objs, "Deployment", "serin")
    check(d["spec"]["replicas"] == 1, f"[{s}] one replica", f"{d['spec']['replicas']}")
    a = args_of(container(d, "controller"))
    check("--leader-election=false" in a, f"[{s}] leader election turned off", f"args {a}")
    check(not find(objs, "Role", "serin-leader-election"), f"[{s}] no Lease RBAC without leader election", "")
    check(not find(objs, "ConfigMap") and not find(objs, "ServiceMonitor"), f"[{s}] no dashboard when disabled", "")
    check(container(d, "controller")["image"] == "registry.example.com/serin:dev", f"[{s}] image repository and tag from values", container(d, "controller")["image"])
    check(not find(objs, "ServiceAccount") and d["spec"]["template"]["spec"]["serviceAccountName"] == "existing",
          f"[{s}] an existing ServiceAccount is used when serviceAccount.create is false", "")


# (name, values, service accounts the values say exist already)
SCENARIOS: list[tuple[str, dict[str, Any], set[tuple[str, str]]]] = [
    ("defaults", {}, set()),
    (
        "namespaced",
        {
            "watchNamespace": "apps",
            "leaderElection": {"namespace": "serin-leases"},
            "metricsServer": "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-1",
            "provider": "gatewayapi:v1",
            "clusterName": "prod-eu-1",
            "logFormat": "text",
            "port": 9000,
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": IRSA}},
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "dashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Serin"}},
            "loadtester": {
                "enabled": True,
                "namespace": "test",
                "allowCmd": ["curl", "grep"],
                "namespaces": ["test"],
                "timeout": "10m",
                "maxTasks": 4,
            },
        },
        set(),
    ),
    (
        "single",
        {
            "replicaCount": 1,
            "leaderElection": {"enabled": False},
            "dashboard": {"enabled": False},
            "image": {"repository": "registry.example.com/serin", "tag": "dev"},
            "serviceAccount": {"create": False, "name": "existing"},
        },
        {(NAMESPACE, "existing")},
    ),
]

# Values that must be refused, and the words the refusal must contain.
BAD_VALUES: list[tuple[dict[str, Any], list[str]]] = [
    ({"logFormat": "xml"}, ["logFormat"]),
    ({"provider": "istio"}, ["provider"]),
    ({"replicas": 3}, ["replicas"]),
    ({"loadtester": {"allowCmd": "curl"}}, ["allowCmd"]),
    ({"serviceAccount": {"create": False}}, ["serviceAccount.name"]),
]


# ---- 7. dashboard -------------------------------------------------------------------------------


def exported_series(telemetry: Path) -> dict[str, set[str]]:
    """Series names the controller exports, with their label names, from its registry code."""
    src = telemetry.read_text()
    prefix = re.search(r'Registry::with_prefix\(\s*"([a-z0-9_]+)"', src)
    pre = prefix.group(1) + "_" if prefix else ""
    label_sets = {
        m.group(1): set(re.findall(r"pub\s+([a-z_][a-z0-9_]*)\s*:", m.group(2)))
        for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\}", src, re.S)
    }
    decls: dict[str, str] = {
        m.group(1): m.group(2)
        for m in re.finditer(r"let\s+(?:mut\s+)?([a-z_][a-z0-9_]*)\s*(?::[^=]*)?=([^;]*);", src, re.S)
    }
    out: dict[str, set[str]] = {}
    for m in re.finditer(
        r'\.register(_with_unit)?\(\s*"([a-z0-9_]+)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*(?:Unit::(\w+)\s*,\s*)?([^,)]+)',
        src,
        re.S,
    ):
        name = pre + m.group(2)
        if m.group(3):
            name += "_" + {"Seconds": "seconds", "Bytes": "bytes", "Ratio": "ratio"}.get(m.group(3), m.group(3).lower())
        var = re.sub(r"^Box::new\(", "", m.group(4).strip())
        var = re.match(r"\w*", var).group(0)
        decl = decls.get(var, m.group(4))
        family = re.search(r"Family::<\s*(\w+)", decl)
        labels = label_sets.get(family.group(1), set()) if family else set()
        kind = "counter" if "Counter" in decl else "histogram" if "Histogram" in decl else "gauge" if "Gauge" in decl else "?"
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}.get(
            kind, ["", "_total", "_bucket", "_sum", "_count"]
        )
        for suffix in suffixes:
            out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


# Labels Prometheus adds when it scrapes the controller through the chart's Service.
TARGET_LABELS = {"instance", "job", "pod", "service", "endpoint", "container"}
# Grafana's variables, replaced by sample values so that the queries parse as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "1m", "$namespace": ".*", "$canary": ".*"}


def promql_names(pp: Any, expr: str) -> tuple[list[tuple[str, set[str]]], list[set[str]]]:
    """(metric name, matcher labels) of each selector and the label sets aggregations group by;
    raises ValueError when the query is not PromQL."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    ast = pp.parse(expr)
    selectors: list[tuple[str, set[str]]] = []
    groupings: list[set[str]] = []

    def visit(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            selectors.append((node.name or "", {m.name for m in node.matchers.matchers}))
        elif kind == "AggregateExpr" and node.modifier is not None:
            groupings.append(set(node.modifier.labels))

    pp.walk(ast, visit)
    return selectors, groupings


def check_dashboard(pp: Any, chart: Path, objs: list[dict[str, Any]], telemetry: Path) -> None:
    print(f"Grafana dashboard against {telemetry}")
    cm = one(objs, "ConfigMap", "serin-dashboard")
    check(len(cm["data"]) == 1, "the ConfigMap holds one dashboard", f"keys {list(cm['data'])}")
    text = next(iter(cm["data"].values()))
    check(text == (chart / "dashboards" / "serin.json").read_text().rstrip("\n"), "the ConfigMap holds dashboards/serin.json unchanged", "")
    try:
        dash = json.loads(text)
    except json.JSONDecodeError as e:
        check(False, "the dashboard is JSON", str(e))
        return
    check(bool(dash.get("uid")) and bool(dash.get("title")), "the dashboard has a uid and a title", "")
    panels = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        panels.append(p)
        stack.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)), "panel ids are unique", f"{ids}")
    exported = exported_series(telemetry)
    check(bool(exported), f"series found in {telemetry}", "no registry.register(...) calls parsed")
    used: set[str] = set()
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title")
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        check(bool(exprs) and all(exprs), f"panel '{title}' has queries", f"targets {p.get('targets')}")
        for expr in exprs:
            try:
                selectors, groupings = promql_names(pp, expr)
            except ValueError as e:
                check(False, f"panel '{title}': the query is PromQL", f"{e}: {expr}")
                continue
            names = {n for n, _ in selectors}
            unknown = sorted(names - set(exported))
            check(bool(names) and not unknown, f"panel '{title}': queries only series the controller exports: {', '.join(sorted(names))}",
                  f"unknown {unknown}; exported {sorted(exported)}")
            known = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS
            for n, matched in selectors:
                extra = sorted(matched - exported.get(n, set()) - TARGET_LABELS)
                check(not extra, f"panel '{title}': {n} is filtered by labels it has", f"{extra} not in {sorted(exported.get(n, set()))}")
            for g in groupings:
                check(g <= known, f"panel '{title}': groups by labels its series have ({', '.join(sorted(g))})", f"{sorted(g - known)} not in {sorted(known)}")
            used |= names
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", q.strip())
        if var.get("type") != "query":
            continue
        if not check(m is not None, f"variable '{var.get('name')}' is label_values(series, label)", q):
            continue
        selectors, _ = promql_names(pp, m.group(1) or "up")
        for n, _ in selectors:
            check(m.group(2) in exported.get(n, set()), f"variable '{var.get('name')}': {n} has the label {m.group(2)}", f"labels {sorted(exported.get(n, set()))}")
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    unshown = sorted(families - shown)
    print(f"       series shown: {len(shown)} of {len(families)} metric families" + (f"; not shown: {unshown}" if unshown else ""))


# ---- 8. README ----------------------------------------------------------------------------------


def leaf_paths(v: Any, prefix: str = "") -> list[str]:
    if isinstance(v, dict) and v:
        out = []
        for k, x in v.items():
            out += leaf_paths(x, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def table_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the markdown table(s) under `## heading`, header and separator rows left out."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not m:
        return []
    rows = []
    for line in m.group(1).splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:] if rows else []


def check_readme(chart: Path, default_objs: list[dict[str, Any]]) -> None:
    readme = (chart / "README.md").read_text()
    print(f"{chart / 'README.md'}")
    values = yaml.safe_load((chart / "values.yaml").read_text())
    documented = {c[0].strip("`") for c in table_rows(readme, "Values") if c}
    check(bool(documented), "the README has a Values table", "no table under '## Values'")
    undocumented = [p for p in leaf_paths(values) if not any(p == d or p.startswith(d + ".") for d in documented)]
    check(not undocumented, "the README lists every value of values.yaml", f"not listed: {undocumented}")
    stale = sorted(d for d in documented if not any(p == d or p.startswith(d + ".") for p in leaf_paths(values)))
    check(not stale, "the README lists no value values.yaml lacks", f"not in values.yaml: {stale}")
    granted = rules_of(default_objs)
    listed: set[tuple[str, str, str, str]] = set()
    for cells in table_rows(readme, "RBAC"):
        if len(cells) < 4:
            continue
        group = cells[0].strip("`")
        group = "" if group in ("core", '""') else group
        names = [n.strip(" `") for n in re.findall(r"`([^`]+)`", cells[1])]
        resource_names = re.findall(r"named `([^`]+)`", cells[1])
        resources = [n for n in names if n not in resource_names]
        verbs = [v.strip(" `") for v in cells[2].split(",") if v.strip()]
        for r in resources:
            for v in verbs:
                for n in resource_names or [""]:
                    listed.add((group, r, v, n))
    check(bool(listed), "the README has an RBAC table", "no rows under '## RBAC'")
    check(listed == granted, "the README's RBAC table lists exactly what the chart grants",
          f"granted but not listed: {sorted(granted - listed)}; listed but not granted: {sorted(listed - granted)}")


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, required=True)
    parser.add_argument("--crds", type=Path, required=True)
    parser.add_argument("--telemetry", type=Path, required=True)
    args = parser.parse_args()
    if os.environ.get("HELM_DRIVER") != "memory":
        print("error: run with HELM_DRIVER=memory in the environment (Helm reads it when loaded)", file=sys.stderr)
        return 2
    import helm_sdkpy as helm
    import kubernetes_validate as kv
    import promql_parser as pp

    versions = ["1.28", kv.utils.latest_version()]
    check_crds(args.chart, args.crds)
    lint(helm, args.chart)
    rendered: dict[str, list[dict[str, Any]]] = {}
    for name, values, existing in SCENARIOS:
        print(f"render [{name}] with values {json.dumps(values)}")
        try:
            objs, notes = render(helm, args.chart, values)
        except RenderError as e:
            check(False, f"[{name}] the chart renders", str(e))
            continue
        check(True, f"[{name}] the chart renders: {len(objs)} objects")
        rendered[name] = objs
        validate_schemas(kv, name, objs, versions)
        check_wiring(name, objs, existing)
        expect: dict[str, Callable[[], None]] = {
            "defaults": lambda: expect_defaults(objs, notes),
            "namespaced": lambda: expect_namespaced(objs, notes, rules_of(find(rendered.get("defaults", []), "ClusterRole"))),
            "single": lambda: expect_single(objs, notes),
        }
        try:
            expect[name]()
        except (AssertionError, KeyError, IndexError, TypeError) as e:
            check(False, f"[{name}] rendered objects have the expected shape", repr(e))
    print("bad values are refused")
    for values, words in BAD_VALUES:
        try:
            render(helm, args.chart, values)
            check(False, f"values {json.dumps(values)} are refused", "the chart rendered them")
        except RenderError as e:
            message = str(e)
            check(all(w in message for w in words), f"values {json.dumps(values)} are refused, naming {', '.join(words)}", message)
    if "defaults" in rendered:
        check_dashboard(pp, args.chart, rendered["defaults"], args.telemetry)
        check_readme(args.chart, rendered["defaults"])
    print()
    if failures:
        print(f"chart checks: {len(failures)} of {checks} failed:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"chart checks: all {checks} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
