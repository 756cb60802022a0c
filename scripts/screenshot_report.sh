#!/usr/bin/env bash
# Screenshots of a report's HTML page at a wide laptop, a laptop and a phone width, to look
# at (headless Chromium: Debian's `chromium` package).
#
#   lmcollapse report runs/quickstart
#   scripts/screenshot_report.sh runs/quickstart/leaderboard.html shots/
#   # -> shots/leaderboard_1400.png, _1280.png, _390.png
#   HEIGHT=16000 scripts/screenshot_report.sh ...   # the whole page (default: the top 3000 px)
set -euo pipefail
page=$(realpath "$1")
out=${2:-.}
mkdir -p "$out"
for width in 1400 1280 390; do
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="$width,${HEIGHT:-3000}" --screenshot="$out/leaderboard_$width.png" "file://$page" \
    > /dev/null 2>&1
  echo "$out/leaderboard_$width.png"
done
