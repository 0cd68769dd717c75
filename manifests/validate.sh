#!/bin/sh
# Validates every manifest offline against the Kubernetes 1.30 schemas
# (pip install kubernetes-validate). kustomization.yaml is not a Kubernetes object.
set -eu
cd "$(dirname "$0")"
files=$(ls *.yaml | grep -v '^kustomization.yaml$')
kubernetes-validate -k 1.30.0 --strict $files
