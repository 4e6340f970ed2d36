#!/usr/bin/env bash
# Render a study report in headless Chromium and save a PNG screenshot, to look at the page as a reader
# would. Usage: scripts/screenshot_report.sh RUN_DIR_OR_HTML [OUT.png] [HEIGHT]
# Needs Debian's `chromium` (apt-get install -y chromium). No network is used: the page is self-contained.
set -euo pipefail
target="${1:?usage: $0 RUN_DIR_OR_HTML [OUT.png] [HEIGHT]}"
if [[ -d "$target" ]]; then html="$target/report/index.html"; else html="$target"; fi
[[ -f "$html" ]] || { echo "no report at $html (run: flopmatch report RUN)" >&2; exit 2; }
out="${2:-$(dirname "$html")/screenshot.png}"
height="${3:-4000}"
browser="$(command -v chromium || command -v chromium-browser || true)"
[[ -n "$browser" ]] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="1280,$height" \
  --screenshot="$(realpath -m "$out")" "file://$(realpath "$html")" >/dev/null 2>&1
[[ -s "$out" ]] || { echo "chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
