#!/usr/bin/env bash
# Re-extract the FlinkDeployment CRD that tests/test_deploy.py validates against.
#
# The Flink Kubernetes Operator publishes its CRDs inside the API jar on Maven
# Central (META-INF/fabric8/*.yml, generated from the Java model the operator
# itself uses). Usage, from the repository root:
#     deploy/flink/crd/fetch-crd.sh [OPERATOR_VERSION]      (default 1.10.0)
# Needs mvn and unzip. Commit the refreshed .yml together with the sha256 printed.
set -euo pipefail

version="${1:-1.10.0}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
  -Dartifact="org.apache.flink:flink-kubernetes-operator-api:${version}" \
  -DoutputDirectory="$work"
unzip -q -o -d "$work/x" "$work/flink-kubernetes-operator-api-${version}.jar" \
  'META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml'
cp "$work/x/META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml" "$here/"
echo "operator-api ${version}:"
sha256sum "$here/flinkdeployments.flink.apache.org-v1.yml"
