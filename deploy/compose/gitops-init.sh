#!/bin/sh
# Makes the demo GitOps repository once: a bare repository whose main branch deployed the demo
# app at v1.4.1, then at v1.5.0 (the bad release), 2 replicas. Runs as a one-shot service.
set -eu
repo=/gitops/gitops.git
if [ -d "$repo" ]; then
  echo "gitops-init: $repo exists"
  exit 0
fi
git init -q --bare -b main "$repo"
work=$(mktemp -d)
git clone -q "$repo" "$work"
mkdir -p "$work/apps/demo"
for tag in v1.4.1 v1.5.0; do
  cat > "$work/apps/demo/kustomization.yaml" <<YAML
# The demo app, as Argo CD or Flux would deploy it.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml
images:
  - name: ghcr.io/selfheal/demo
    newTag: $tag # the release
replicas:
  - name: demo
    count: 2
YAML
  git -C "$work" add -A
  git -C "$work" -c user.name=demo -c user.email=demo@example.com commit -q -m "demo: release $tag"
done
git -C "$work" push -q origin main
chown -R 65532:65532 /gitops
echo "gitops-init: made $repo"
