#!/usr/bin/env bash
# Makes sure Debian's Chromium is on the machine for the web console's browser tests (Playwright drives it
# with executable_path; Playwright's own browser downloads are not possible here). Installs it with
# apt-get where it is missing (as root, or through sudo), else stops with one clear message.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ]; then
  run=()
elif command -v sudo >/dev/null 2>&1; then
  run=(sudo -n)  # never wait for a password (CI has no one to type it)
else
  echo "error: Chromium is missing. Install it with: sudo apt-get install chromium" >&2
  exit 1
fi
echo "installing Debian's chromium for the browser tests (apt-get) ..." >&2
"${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
"${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "error: chromium did not install" >&2; exit 1; }
