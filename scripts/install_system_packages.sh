#!/usr/bin/env bash
# The system set-up step: installs the Debian packages some tests need besides
# the Python venv. Debian or Ubuntu (apt-get); safe to run again, and does
# nothing when everything is already there.
#   scripts/install_system_packages.sh
set -euo pipefail

# Package, then why, for each one whose programs are missing from PATH.
packages=()
reasons=()
if ! command -v chromium >/dev/null 2>&1; then
  packages+=(chromium)
  reasons+=("headless browser for the web page test (Playwright drives it)")
fi
# One Debian package holds both programs.
if ! command -v prometheus >/dev/null 2>&1 \
    || ! command -v promtool >/dev/null 2>&1; then
  packages+=(prometheus)
  reasons+=("prometheus server and promtool for the monitoring tests")
fi

# Debian keeps the server's programs off PATH, under its major version.
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
    && ! command -v postgres >/dev/null 2>&1; then
  packages+=(postgresql)
  reasons+=("PostgreSQL server for the sweep test on a shared study")
fi

if ((${#packages[@]} == 0)); then
  echo "chromium, prometheus, promtool and postgresql are already there:" \
    "nothing to do."
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install by hand: ${packages[*]}" >&2
  exit 1
fi

# Root installs directly; anyone else needs sudo.
sudo=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "error: not root and sudo not found; as root run: apt-get install" \
      "--no-install-recommends ${packages[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

for i in "${!packages[@]}"; do
  echo "installing ${packages[i]}: ${reasons[i]}"
done
# `env` sets the variable under sudo too (sudo may drop the caller's).
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
"${apt[@]}" update -q
"${apt[@]}" install -y -q --no-install-recommends "${packages[@]}"
echo "installed: ${packages[*]}"
