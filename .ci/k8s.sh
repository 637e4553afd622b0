#!/usr/bin/env bash
# Renders every kustomize variant under deploy/k8s and validates each
# rendered manifest against the Kubernetes API schemas (kubernetes-validate,
# --strict: unknown fields are errors). Fails on any error, and on any
# resource without a schema except the CRD kinds allowed below.
#
#   bash .ci/k8s.sh             # quiet; prints one line per variant
#   K8S_VERSION=1.36.0 bash .ci/k8s.sh
#   K8S_VARIANTS="deploy/k8s/base" bash .ci/k8s.sh
#
# Needs kubectl with kustomize v5 (kubectl kustomize) and installs
# kubernetes-validate from PyPI when missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Newest Kubernetes version kubernetes-validate 1.37.0 has schemas for.
K8S_VERSION="${K8S_VERSION:-1.37.0}"
# Custom resources, which kubernetes-validate has no schema for: rendered
# (so kustomize checks them) but not validated.
ALLOW_NO_SCHEMA_KINDS="ServiceMonitor Issuer Certificate"
VARIANTS="${K8S_VARIANTS:-deploy/k8s deploy/k8s/base deploy/k8s/overlays/statefulset deploy/k8s/overlays/servicemonitor deploy/k8s/overlays/cert-manager}"

if ! command -v kubectl >/dev/null 2>&1; then
    # Debian's kubectl; its embedded kustomize may be too old (checked below).
    (apt-get update -qq && apt-get install -y -qq kubernetes-client) >/dev/null 2>&1 || true
fi
if ! command -v kubectl >/dev/null 2>&1; then
    echo "k8s: kubectl not found and could not be installed" >&2
    exit 1
fi
kustomize_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [ -z "$kustomize_version" ] || [ "$kustomize_version" -lt 5 ]; then
    echo "k8s: kubectl embeds kustomize ${kustomize_version:-unknown}; v5 or later is needed" >&2
    exit 1
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
        'kubernetes-validate==1.37.0'
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for v in $VARIANTS; do
    f="$out/$(echo "$v" | tr / _).yaml"
    if ! kubectl kustomize "$v" >"$f" 2>"$f.err"; then
        echo "k8s: $v: kustomize failed:" >&2
        cat "$f.err" >&2
        failed=1
        continue
    fi
    n=$(grep -c '^kind:' "$f" || true)
    set +e
    report=$(kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$f" 2>&1)
    rc=$?
    set -e
    # A resource without a schema is only a warning to kubernetes-validate
    # (a mistyped apiVersion, say): an error here unless allowed.
    unknown=$(printf '%s\n' "$report" | grep "Couldn't find schema" || true)
    skipped=$(printf '%s\n' "$unknown" | grep -c . || true)
    for k in $ALLOW_NO_SCHEMA_KINDS; do
        unknown=$(printf '%s\n' "$unknown" | grep -v "for kind $k with" || true)
    done
    if [ "$rc" -ne 0 ] || [ -n "$unknown" ]; then
        echo "k8s: $v: validation against Kubernetes $K8S_VERSION failed:" >&2
        printf '%s\n' "$report" >&2
        failed=1
    else
        echo "k8s: $v: $n resources, $((n - skipped)) valid against Kubernetes $K8S_VERSION (strict), $skipped custom without schema"
    fi
done
exit "$failed"
