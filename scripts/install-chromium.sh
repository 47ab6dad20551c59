#!/usr/bin/env bash
# Debian's Chromium for the labeling app's browser test (Playwright drives it through
# executablePath; Playwright's own browser download is never used). Needs apt and root;
# elsewhere, say what to do and go on: only that one test needs it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium (for the browser tests: the labeling app, the evaluation report)"
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
else
    echo "note: no chromium; install your distribution's chromium package to run tests/feedback/test_browser.py" >&2
fi
