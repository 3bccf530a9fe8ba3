#!/usr/bin/env python3
"""Checks selfheal's packaging, as CI runs it (scripts/test):

1. docker-compose (Debian's) accepts docker-compose.yml, with every profile.
2. Each Helm chart lints clean (strict, Kubernetes 1.30) and renders — with its default values and
   with ci/full-values.yaml — through Helm's own engine (helm-python-sdk), and every rendered
   manifest validates against the Kubernetes 1.30 schemas (kubernetes-validate, strict).
3. Every rendered Deployment runs as non-root with a read-only root filesystem, has a liveness
   probe on /healthz and a readiness probe on /readyz on its http port, and sets CPU and memory
   requests and limits.
4. The README's compose instructions name only profiles, services and ports the compose file has,
   and each chart's README documents the values its values.yaml has.
5. deploy/nats/helm-values.yaml (the NATS chart's) gives every user of deploy/nats/nats-server.conf
   the same password variable and permissions, and no other user; the password variables come
   from the Secret; the cluster has 3 nodes.
6. Tokens and ports, in compose and in the charts: no service takes the shared `grpc_token`; each
   takes exactly the named tokens and roles of ROLES, and holds (mounts) only the tokens it uses,
   so only the pr-controller holds one that can approve; compose publishes only the gateway and
   the UIs, on 127.0.0.1, and commits no token.

Exit status 0 when everything holds; otherwise each failure is printed and the status is 1.
"""

import pathlib
import re
import subprocess
import sys
import tomllib

import helm_python
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ["gateway", "policy", "pr-controller", "notifier"]
KUBE = "1.30.0"
failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}")


# Each service's [[grpc_tokens]]: name -> roles. The gateway takes only the webhook's tokens.
ROLES = {
    "gateway": {},
    "policy": {"reader": ["read"]},
    "pr-controller": {"policy": ["describe"], "operator": ["read", "operate"], "reader": ["read"]},
    "notifier": {"reader": ["read"]},
}
# The tokens each compose container holds (its token volumes) and each chart mounts (Secret keys).
COMPOSE_TOKENS = {
    "gateway": {"webhook"},
    "alertmanager": {"webhook"},
    "policy": {"policy", "reader"},
    "pr-controller": {"policy", "operator", "reader"},
    "notifier": {"reader"},
    "selfheal": {"operator", "reader"},
    "tokens-init": {"webhook", "policy", "operator", "reader"},
}
CHART_TOKENS = {
    "gateway": {"webhook-token"},
    "policy": {"policy-token", "reader-token"},
    "pr-controller": {"policy-token", "operator-token", "reader-token"},
    "notifier": {"reader-token"},
}
PUBLISHED = {"gateway", "prometheus", "alertmanager", "jaeger", "grafana"}


def check_service_tokens(where: str, service: str, text: str) -> None:
    config = tomllib.loads(text)
    for shared in ("grpc_token", "grpc_token_file"):
        if shared in config:
            fail(f"{where}: sets the shared {shared} (every role): give named [[grpc_tokens]] instead")
    named = {t["name"]: t.get("roles", []) for t in config.get("grpc_tokens", [])}
    if named != ROLES[service]:
        fail(f"{where}: grpc_tokens {named}, not {ROLES[service]}")


def check_tokens(compose: dict) -> None:
    for service in CHARTS:
        check_service_tokens(f"deploy/compose/{service}.toml", service, (ROOT / f"deploy/compose/{service}.toml").read_text())
        values = yaml.safe_load((ROOT / f"deploy/helm/{service}/values.yaml").read_text())
        check_service_tokens(f"chart {service} config", service, values["config"])
        keys = {f["key"] for f in values["secretFiles"] if f["key"].endswith("-token") and not f["key"].startswith(("github", "gitlab", "gitea"))}
        if keys != CHART_TOKENS[service]:
            fail(f"chart {service}: mounts the tokens {sorted(keys)}, not {sorted(CHART_TOKENS[service])}")
    for forge in sorted((ROOT / "deploy/compose/forges").glob("*.toml")):
        check_service_tokens(f"deploy/compose/forges/{forge.name}", "pr-controller", forge.read_text())
    for name, service in compose["services"].items():
        volumes = {str(v).split(":")[0] for v in service.get("volumes", [])}
        held = {v.removesuffix("-token") for v in volumes if v.endswith("-token")}
        if held != COMPOSE_TOKENS.get(name, set()):
            fail(f"compose {name}: holds the tokens {sorted(held)}, not {sorted(COMPOSE_TOKENS.get(name, set()))}")
        for port in service.get("ports", []):
            if name not in PUBLISHED or not str(port).startswith("127.0.0.1:"):
                fail(f"compose {name}: publishes {port} (only {sorted(PUBLISHED)}, on 127.0.0.1)")
        if service.get("secrets"):
            fail(f"compose {name}: a committed secret file; tokens are made by tokens-init")
    if compose.get("secrets"):
        fail("docker-compose.yml: a committed secret file; tokens are made by tokens-init")
    print(f"ok   tokens: roles as ROLES in compose, forges and charts; each holds only its own; ports on 127.0.0.1")


def check_compose() -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    profiles = sorted({p for s in compose["services"].values() for p in s.get("profiles", [])})
    args = ["docker-compose", "-f", str(ROOT / "docker-compose.yml")]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(args + ["config", "-q"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"docker-compose config -q: {result.stderr.strip()}")
    else:
        print(f"ok   docker-compose config -q (profiles: {', '.join(profiles)})")
    return compose


def check_deployment(where: str, doc: dict, http_port: int) -> None:
    spec = doc["spec"]["template"]["spec"]
    if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
        fail(f"{where}: pod securityContext.runAsNonRoot is not true")
    for container in spec["containers"]:
        name = f"{where} container {container['name']}"
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem is not true")
        if security.get("runAsNonRoot") is not True:
            fail(f"{name}: runAsNonRoot is not true")
        if security.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation is not false")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        if ports.get("http") != http_port:
            fail(f"{name}: the http port is {ports.get('http')}, not {http_port}")
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("path") != path or get.get("port") not in ("http", http_port):
                fail(f"{name}: {probe} is not GET {path} on the http port: {get}")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not resources.get(kind, {}).get(resource):
                    fail(f"{name}: no {kind}.{resource}")


def check_chart(name: str) -> None:
    chart_dir = ROOT / "deploy" / "helm" / name
    helm_python.dependency_build(str(chart_dir))
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    full = yaml.safe_load((chart_dir / "ci" / "full-values.yaml").read_text())
    http_port = defaults["service"]["httpPort"]
    for label, values in [("default values", None), ("ci/full-values.yaml", full)]:
        where = f"chart {name} ({label})"
        report = helm_python.lint(str(chart_dir), values, strict=True, kube_version=f"v{KUBE}")
        problems = report.get("errors", []) + [
            f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2
        ]
        for problem in problems:
            fail(f"{where}: lint: {problem}")
        chart = helm_python.Chart.load(str(chart_dir))
        rendered = chart.render(values, name="selfheal", namespace="selfheal")
        kinds = []
        docs = []
        for template, text in sorted(rendered.items()):
            if not template.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if not doc:
                    continue
                kinds.append(doc["kind"])
                docs.append(doc)
                if doc["apiVersion"] == "monitoring.coreos.com/v1":
                    # A CRD: no schema in Kubernetes' own; check what the operator needs.
                    if not doc["spec"].get("endpoints") or not doc["spec"].get("selector"):
                        fail(f"{where}: {template}: ServiceMonitor without endpoints or selector")
                    continue
                try:
                    kubernetes_validate.validate(doc, KUBE, strict=True)
                except kubernetes_validate.ValidationError as error:
                    fail(f"{where}: {template}: {doc['kind']} is not valid Kubernetes {KUBE}: {error.message}")
                if doc["kind"] == "Deployment":
                    check_deployment(f"{where} {template}", doc, http_port)
        if "Deployment" not in kinds:
            fail(f"{where}: renders no Deployment")
        if values and (values.get("policies") or {}).get("files"):
            check_policies(where, docs, values["policies"]["files"])
        print(f"ok   {where}: lint clean, {len(kinds)} manifests valid for Kubernetes {KUBE}: {', '.join(sorted(kinds))}")
        chart.close()


def check_policies(where: str, docs: list, files: dict) -> None:
    """The policies given as values are a ConfigMap, mounted where the service reads them."""
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    volume = next((v for v in spec.get("volumes", []) if v["name"] == "policies"), None)
    mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == "policies"]
    if volume is None or not mounts:
        fail(f"{where}: policies are given but not mounted")
        return
    if [m["mountPath"] for m in mounts] != ["/etc/selfheal/policies"]:
        fail(f"{where}: policies mounted at {[m['mountPath'] for m in mounts]}, not /etc/selfheal/policies")
    data = maps.get(volume["configMap"]["name"], {}).get("data", {})
    if {k: v.strip() for k, v in data.items()} != {k: v.strip() for k, v in files.items()}:
        fail(f"{where}: the policies ConfigMap holds {sorted(data)}, not the files given {sorted(files)}")
    else:
        print(f"ok   {where}: policies {sorted(files)} mounted at /etc/selfheal/policies")


def check_readme(compose: dict) -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Deploy\n(.*?)(?=^## )", readme, re.S | re.M)
    if not match:
        fail("README.md has no '## Deploy' section")
        return
    section = match.group(1)
    services = compose["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    published = {
        int(str(port).split(":")[-2]) for s in services.values() for port in s.get("ports", [])
    }
    commands = re.findall(r"^.*?(docker compose .*)$", section, re.M)
    if not commands:
        fail("README's Deploy section has no docker compose command")
    for command in commands:
        logs = re.match(r"docker compose logs(?: -f)? (.*)$", command)
        for service in logs.group(1).split() if logs else []:
            if service not in services:
                fail(f"README: `{command}` names the service {service}, which docker-compose.yml lacks")
        for profile in re.findall(r"--profile\s+(\S+)", command):
            if profile not in profiles:
                fail(f"README: `{command}` names the profile {profile}, which docker-compose.yml lacks")
    for port in {int(p) for p in re.findall(r"localhost:(\d+)", section)}:
        if port not in published:
            fail(f"README: localhost:{port} is not a port docker-compose.yml publishes")
    for service in re.findall(r"`compose:([a-z-]+)`", section):
        if service not in services:
            fail(f"README: the compose service {service} does not exist")
    print(f"ok   README's Deploy section: {len(commands)} compose commands checked against docker-compose.yml")


def check_chart_readmes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "helm" / "readme.py"), "--check"], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"chart READMEs: {result.stdout.strip()}")
    else:
        print("ok   chart READMEs match their values.yaml")


def nats_conf_users(text: str) -> dict:
    """user -> (password variable, publish allow, subscribe allow) of a nats-server.conf."""
    users = {}
    for chunk in text.split('user: "')[1:]:
        name = chunk.split('"')[0]
        password = re.search(r"password: \$(\w+)", chunk)
        publish = re.search(r"publish: \{\s*allow: \[(.*?)\]", chunk, re.S)
        subscribe = re.search(r"subscribe: \{\s*allow: \[(.*?)\]", chunk, re.S)
        users[name] = (
            password.group(1) if password else None,
            re.findall(r'"([^"]+)"', publish.group(1)) if publish else [],
            re.findall(r'"([^"]+)"', subscribe.group(1)) if subscribe else [],
        )
    return users


def check_nats_helm_values() -> None:
    conf = nats_conf_users((ROOT / "deploy/nats/nats-server.conf").read_text())
    values = yaml.safe_load((ROOT / "deploy/nats/helm-values.yaml").read_text())
    helm = {}
    for user in values["config"]["merge"]["authorization"]["users"]:
        password = re.fullmatch(r"<< \$(\w+) >>", user["password"])
        helm[user["user"]] = (
            password.group(1) if password else None,
            user["permissions"]["publish"]["allow"],
            user["permissions"]["subscribe"]["allow"],
        )
    ok = True
    for name in sorted(set(conf) | set(helm)):
        if conf.get(name) != helm.get(name):
            fail(f"nats helm values: user {name} differs from nats-server.conf: {helm.get(name)} vs {conf.get(name)}")
            ok = False
    env = values["container"]["env"]
    for name, (variable, _, _) in helm.items():
        ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("key") != name:
            fail(f"nats helm values: {variable} does not come from the Secret's key {name}")
            ok = False
    if values["config"]["cluster"] != {"enabled": True, "replicas": 3}:
        fail("nats helm values: the cluster is not 3 nodes")
        ok = False
    if ok:
        print(f"ok   nats helm values: {len(helm)} users as nats-server.conf, 3 nodes")


def main() -> int:
    check_nats_helm_values()
    check_chart_readmes()
    compose = check_compose()
    check_tokens(compose)
    for name in CHARTS:
        check_chart(name)
    check_readme(compose)
    if failures:
        print(f"\n{len(failures)} packaging check(s) failed")
        return 1
    print("\nall packaging checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
