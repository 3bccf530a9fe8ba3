#!/usr/bin/env python3
"""Writes each service chart's README.md from its Chart.yaml and the `# --` comments of its
values.yaml, so the documented values are the real ones. Run after changing values.yaml:
`python3 deploy/helm/readme.py`; deploy/tests/check_packaging.py fails when a README is stale."""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent
CHARTS = ["gateway", "policy", "pr-controller", "notifier"]


def rows(values_text: str, values: dict) -> list[tuple[str, str, str]]:
    found, doc, stack = [], [], []
    for line in values_text.splitlines():
        if m := re.match(r"^(\s*)# -- (.*)$", line):
            doc = [m.group(2)]
            continue
        if (m := re.match(r"^(\s*)# (.*)$", line)) and doc:
            doc.append(m.group(2))
            continue
        if m := re.match(r"^(\s*)([A-Za-z][\w-]*):", line):
            stack = stack[: len(m.group(1)) // 2] + [m.group(2)]
            if doc:
                key = ".".join(stack)
                value = values
                for part in stack:
                    value = value.get(part) if isinstance(value, dict) else None
                if key == "config":
                    default = "(TOML, see values.yaml)"
                elif isinstance(value, (list, dict)) and value:
                    default = "see values.yaml"
                else:
                    default = "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"
                found.append((key, " ".join(doc), default))
            doc = []
    return found


def readme(name: str) -> str:
    chart_dir = ROOT / name
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values_text = (chart_dir / "values.yaml").read_text()
    values = yaml.safe_load(values_text)
    table = "\n".join(f"| `{k}` | {d} | {v} |" for k, d, v in rows(values_text, values))
    secrets = "\n".join(
        f"- `{s['secretName']}` key `{s['key']}` → "
        + (f"`{s['env']}`" if s.get("env") else f"`/var/run/secrets/selfheal/{s['secretName']}/{s['key']}` (named in `config`)")
        for s in values["secretFiles"]
    )
    return f"""# {chart['name']}

{chart['description']}

A chart of [selfheal](../../../README.md); it shares its templates with the library chart
[`selfheal-lib`](../selfheal-lib), so build its dependency first:

```sh
helm dependency build deploy/helm/{name}
helm install selfheal-{name} deploy/helm/{name} -f my-values.yaml
```

It renders a Deployment (non-root, read-only root filesystem, all capabilities dropped, liveness
on `/healthz` and readiness on `/readyz`, resource requests and limits), a Service (`http`
{values['service']['httpPort']}, `grpc` {values['service']['grpcPort']}), a ServiceAccount without an API token, a ConfigMap with
the service's TOML configuration, and — when enabled — a PodDisruptionBudget, a Prometheus Operator
ServiceMonitor and a NetworkPolicy. `ci/full-values.yaml` turns everything on; CI lints and renders
both with Helm and validates every manifest against Kubernetes 1.30
(`deploy/tests/check_packaging.py`).

## Secrets

Tokens are never values. The chart mounts these keys of existing Secrets as files and points the
service at them (change them in `secretFiles`):

{secrets}

## NATS

selfheal needs NATS with JetStream. Install it from the official chart and point `nats.url` at it:

```sh
helm repo add nats https://nats-io.github.io/k8s/helm/charts/
helm install nats nats/nats --set config.jetstream.enabled=true
```

## Values

| key | what | default |
|---|---|---|
{table}
"""


if __name__ == "__main__":
    check = "--check" in sys.argv
    stale = []
    for name in CHARTS:
        path = ROOT / name / "README.md"
        text = readme(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("stale (run python3 deploy/helm/readme.py):", *stale)
        sys.exit(1)
