#!/usr/bin/env bash
# Build and install wyng with its manual pages, shell completions and systemd units.
#   scripts/install.sh [PREFIX]        (default /usr/local; DESTDIR is honoured for packaging)
# The units are installed but not enabled: systemctl enable --now wyng-send.timer wyng-monitor.timer
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
root="${DESTDIR:-}$prefix"
cargo install --locked --path . --root "$root" --quiet
wyng="$root/bin/wyng"
"$wyng" man --dir="$root/share/man/man1" >/dev/null
install -d "$root/share/bash-completion/completions" "$root/share/zsh/site-functions" \
    "$root/share/fish/vendor_completions.d"
"$wyng" completions bash >"$root/share/bash-completion/completions/wyng"
"$wyng" completions zsh >"$root/share/zsh/site-functions/_wyng"
"$wyng" completions fish >"$root/share/fish/vendor_completions.d/wyng.fish"
units="${DESTDIR:-}${SYSTEMD_UNIT_DIR:-/etc/systemd/system}"
install -d "$units"
for u in contrib/systemd/*; do
    sed "s|/usr/local/bin/wyng|$prefix/bin/wyng|" "$u" >"$units/$(basename "$u")"
done
echo "wyng installed in $root/bin; manual pages, completions and systemd units ($units) too."
echo "Set options in /etc/wyng/wyng.ini, then: systemctl enable --now wyng-send.timer wyng-monitor.timer"
