#!/usr/bin/env bash
# Fill fuzz/corpus/TARGET/ (git-ignored) with the seeds: fuzz/seeds/TARGET/, the examples and
# the golden configs, and the inputs of past findings (tests/fuzz-regressions/TARGET/).
set -euo pipefail
cd "$(dirname "$0")"
root=..
for t in config_native config_istio route_match upstream_headers upstream_response client_stream; do
    mkdir -p "corpus/$t"
    cp seeds/"$t"/* "corpus/$t/"
    if [ -d "$root/tests/fuzz-regressions/$t" ]; then
        cp "$root/tests/fuzz-regressions/$t"/* "corpus/$t/" 2>/dev/null || true
    fi
done
cp "$root"/examples/native/*.yaml corpus/config_native/
for f in "$root"/tests/golden/broken/native-*.yaml; do cp "$f" "corpus/config_native/golden-$(basename "$f")"; done
cp "$root"/examples/istio/*.yaml corpus/config_istio/
for f in "$root"/tests/golden/broken/istio-*.yaml; do cp "$f" "corpus/config_istio/golden-$(basename "$f")"; done
{ cat "$root/examples/istio/seed-virtualservice.yaml"; printf '\n---\n'; cat "$root/examples/istio/seed-destinations.yaml"; } \
    > corpus/config_istio/seed-both.yaml
for t in config_native config_istio route_match upstream_headers upstream_response client_stream; do
    echo "corpus/$t: $(ls "corpus/$t" | wc -l) files"
done
