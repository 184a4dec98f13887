"""The comparison everyone would write first: inotifywait + curl in bash, and a plain curl loop.

Both scripts upload with `Authorization: Bearer $IMAGEBAN_SECRET_KEY` to `$IMAGEBAN_URL`
(the key comes from the environment, never the command line) and write `{name}.link.json`
atomically (temp file + `mv`, as watchd does), taking the link out of the JSON answer with
bash parameter expansion alone: no jq, no extra process per file beyond curl and mv.
Nothing else: no journal, no retries, no Baidu. That makes them a floor for latency and a
yardstick for throughput, not a fair feature comparison.
"""

from __future__ import annotations

import shutil

DEBIAN_PACKAGE = {"inotifywait": "inotify-tools", "curl": "curl", "bash": "bash"}

_UPLOAD = r"""
set -u
upload() {  # upload "$1", then write "$1.link.json" atomically; 1 on any failure
    local response link
    response=$(curl -sS -H "Authorization: Bearer $IMAGEBAN_SECRET_KEY" -H 'Expect:' \
        -F "image=@$1" "$IMAGEBAN_URL") || return 1
    case $response in
        *'"link":'*) ;;
        *) echo "no link for $1: $response" >&2; return 1 ;;
    esac
    link=${response#*\"link\":}   # what follows the first "link": key
    link=${link#*\"}              # up to its opening quote
    link=${link%%\"*}             # up to its closing quote
    link=${link//\\\//\/}         # tolerate JSON-escaped slashes
    printf '{"link": "%s"}\n' "$link" > "$1.link.json.tmp" && mv -f "$1.link.json.tmp" "$1.link.json"
}
"""

WATCH_SCRIPT = (
    _UPLOAD
    + r"""
inotifywait -m -e close_write --format '%w%f' "$1" | while IFS= read -r file; do
    case $file in
        *.png|*.jpg|*.jpeg|*.gif) upload "$file" ;;
    esac
done
"""
)
"""Usage: bash -c WATCH_SCRIPT bench FOLDER. Prints "Watches established." on stderr when ready."""

LOOP_SCRIPT = (
    _UPLOAD
    + r"""
status=0
for file in "$1"/*.png; do
    upload "$file" || status=1
done
exit $status
"""
)
"""Usage: bash -c LOOP_SCRIPT bench FOLDER. Uploads every PNG in FOLDER one after another."""


def skip_reason(*tools: str) -> str | None:
    """Why a comparison that needs `tools` cannot run here (with the install command), or None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    packages = " ".join(DEBIAN_PACKAGE.get(tool, tool) for tool in missing)
    return f"{', '.join(missing)} not found; install with `apt-get install -y {packages}`"
