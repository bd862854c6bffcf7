#!/usr/bin/env bash
# The Debian packages each `make` target needs, installed when missing.
#
#   scripts/system-deps.sh run|test      check; as root install what is missing (apt-get)
#   scripts/system-deps.sh --list TARGET print the target's packages, one a line
#
# The check is one `dpkg-query` call (no network), so a machine that has everything spends
# nothing here. Not root and something missing: one line naming the exact command, exit 1.
# MICROTURN_SKIP_SYSTEM_DEPS=1 skips the check (packages installed some other way).
set -euo pipefail

# `make run`: serving needs nothing beyond Python (aiortc, av, soundfile and torch ship
# their native libraries in their wheels); python3-venv is added below only when the
# Python that builds .venv lacks ensurepip (Debian's system Python without it).
RUN_PACKAGES=(
)

# `make test`: everything in RUN_PACKAGES plus these. Append new ones at the end.
TEST_PACKAGES=(
  espeak-ng                  # synthetic speech for audio tests (libespeak-ng.so.1 via ctypes)
  flite                      # more synthetic voices (cheap)
  sox                        # command-line audio tool .ci/run always provided (no test calls it yet)
  chromium                   # browser e2e test (Playwright's Python package drives /usr/bin/chromium)
  nodejs                     # `node --check` on the page's scripts
  redis-server               # background agents talk to a real Redis server
  # GStreamer webrtcbin interop test (run with Debian's /usr/bin/python3)
  python3-gi
  gir1.2-gstreamer-1.0
  gir1.2-gst-plugins-bad-1.0
  gstreamer1.0-nice
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-tools
)
# MBROLA diphone voices, a third family of training users (model/data/scenarios.py), also for
# `make test`. Debian ships mbrola in contrib and its voices in non-free: installing one of
# these enables those components (below).
NONFREE_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-en1)
TEST_PACKAGES+=("${NONFREE_PACKAGES[@]}")
SOURCES_DIR="${MICROTURN_APT_SOURCES_DIR:-/etc/apt/sources.list.d}"
OS_RELEASE="${MICROTURN_OS_RELEASE:-/etc/os-release}"

die() { echo "microturn: $*" >&2; exit 1; }

packages_for() {
  case "$1" in
    run) printf '%s\n' "${RUN_PACKAGES[@]}" ;;
    test) printf '%s\n' "${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}" ;;
    *) die "unknown target '$1' (expected: run, test)" ;;
  esac
}

if [ "${1:-}" = "--list" ]; then
  [ $# -eq 2 ] || die "usage: $0 --list run|test"
  packages_for "$2" | sed '/^$/d'
  exit 0
fi
[ $# -eq 1 ] || die "usage: $0 run|test"
mapfile -t wanted < <(packages_for "$1" | sed '/^$/d')

# The venv is built by ${PY:-python3}; Debian splits ensurepip into python3-venv.
py="${PY:-python3}"
if command -v "$py" >/dev/null && ! "$py" -c 'import ensurepip' 2>/dev/null; then
  wanted+=(python3-venv)
fi

[ "${MICROTURN_SKIP_SYSTEM_DEPS:-}" = "1" ] && exit 0
[ ${#wanted[@]} -gt 0 ] || exit 0

if ! command -v dpkg-query >/dev/null; then
  echo "microturn: not a Debian system (no dpkg-query); make sure these are installed: ${wanted[*]}" >&2
  exit 0
fi

# A package counts only when dpkg says "installed" (not "config-files", "not-installed", ...).
# Unknown names print nothing and make dpkg-query exit 1; both just mean "missing".
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${wanted[@]}" 2>/dev/null | awk '$NF == "installed" {print $1}' || true)
missing=()
for p in "${wanted[@]}"; do
  grep -qxF "$p" <<<"$installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != "0" ]; then
  die "missing system packages: ${missing[*]} — run: sudo apt-get install -y ${missing[*]}"
fi

echo "microturn: installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run (unattended upgrades, a parallel make) instead of failing.
apt=(apt-get -o DPkg::Lock::Timeout=300)

# A missing contrib/non-free package: add those components for this Debian release in a
# sources file of our own (once), and read the package lists again.
nonfree=""
for p in "${missing[@]}"; do
  case " ${NONFREE_PACKAGES[*]} " in *" $p "*) nonfree=$p; break ;; esac
done
sources="$SOURCES_DIR/microturn-contrib-non-free.sources"
if [ -n "$nonfree" ] && [ ! -e "$sources" ]; then
  codename=$(. "$OS_RELEASE" 2>/dev/null && [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" || true)
  [ -n "$codename" ] || die "$nonfree is in Debian's contrib/non-free components, and this is not a Debian release it knows; install: ${NONFREE_PACKAGES[*]}"
  echo "microturn: enabling Debian's contrib and non-free components for the MBROLA voices ($sources)" >&2
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$codename" > "$sources"
  "${apt[@]}" update -q >/dev/null || die "apt-get update failed after adding $sources"
fi

# A fresh image often has no package lists yet: update only when the install fails.
if ! "${apt[@]}" install -y -q "${missing[@]}" >/dev/null 2>&1; then
  "${apt[@]}" update -q >/dev/null || die "apt-get update failed; run: apt-get update && apt-get install -y ${missing[*]}"
  "${apt[@]}" install -y -q "${missing[@]}" >/dev/null \
    || die "apt-get install failed; run: apt-get install -y ${missing[*]}"
fi
