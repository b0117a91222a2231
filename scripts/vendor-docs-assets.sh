#!/usr/bin/env bash
# Refreshes the Swagger UI and ReDoc files that /docs and /redoc serve (app/api/static/), from the
# npm registry, at the exact versions below; with their licence files. Run it after changing a
# version, then update the versions and checksums in app/api/static/README.md. The files are
# copied byte for byte (their source-map comments point at maps that are not shipped).
set -euo pipefail

SWAGGER_UI_DIST=5.35.0
REDOC=2.5.4  # redoc 3's standalone bundle is over 2 MiB; 2.x is what FastAPI's defaults load

root=$(cd "$(dirname "$0")/.." && pwd)
static=$root/app/api/static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI_DIST" "redoc@$REDOC" >/dev/null)
mkdir -p "$work/swagger" "$work/redoc"
tar xzf "$work/swagger-ui-dist-$SWAGGER_UI_DIST.tgz" -C "$work/swagger" --strip-components=1
tar xzf "$work/redoc-$REDOC.tgz" -C "$work/redoc" --strip-components=1

rm -rf "$static/swagger-ui" "$static/redoc"
mkdir -p "$static/swagger-ui" "$static/redoc"
for name in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css \
    favicon-32x32.png LICENSE NOTICE; do
    cp "$work/swagger/$name" "$static/swagger-ui/"
done
for name in bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt LICENSE; do
    cp "$work/redoc/$name" "$static/redoc/"
done
(cd "$static" && sha256sum swagger-ui/* redoc/*)
