#!/usr/bin/env bash
# Packaging test (run by .ci/run): build both .deb packages with cargo-deb, check their contents
# and metadata, install the agent package into a throwaway root, verify files, permissions and
# units, upgrade it (config and certificates kept), and purge it (both removed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mpanel/target}"

fail() { echo "packaging test FAILED: $*" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked

# The test checks the packaging, so by default it packages the dev build the test suite already
# made; shipping packages are built with PACKAGE_PROFILE=release (cargo deb's default).
profile="${PACKAGE_PROFILE:-dev}"
echo "== building packages ($profile profile)"
agent_deb=$(cargo deb -p mpanel-agent --profile "$profile" --output "$work/" 2>"$work/deb-agent.log" | tail -n 1) \
    || { cat "$work/deb-agent.log"; fail "cargo deb -p mpanel-agent"; }
panel_deb=$(cargo deb -p mpanel --profile "$profile" --output "$work/" 2>"$work/deb-panel.log" | tail -n 1) \
    || { cat "$work/deb-panel.log"; fail "cargo deb -p mpanel"; }
echo "$agent_deb"; echo "$panel_deb"

echo "== metadata and contents"
for deb in "$agent_deb" "$panel_deb"; do
    dpkg-deb --info "$deb" >"$work/info"
    grep -q '^ Architecture: amd64' "$work/info" || fail "$deb: architecture"
    grep -q '^ Maintainer: ' "$work/info" || fail "$deb: maintainer"
    grep -q '^ Depends: .*libc6' "$work/info" || fail "$deb: shared-library dependencies"
    dpkg-deb --contents "$deb" >"$work/contents"
    # No key material in a package, ever.
    if grep -Eq '\.(key|pem|crt|p12)$' "$work/contents"; then fail "$deb ships key material"; fi
done
dpkg-deb --contents "$agent_deb" >"$work/agent.contents"
for f in ./usr/bin/mpanel-agent ./lib/systemd/system/mpanel-agent.service \
    ./etc/mpanel-agent/agent.toml ./usr/share/mpanel-agent/roles/web.conf \
    ./usr/share/doc/mpanel-agent/operator-guide.md; do
    grep -q " $f\$" "$work/agent.contents" || fail "agent package lacks $f"
done
dpkg-deb --ctrl-tarfile "$agent_deb" | tar -xO ./conffiles | grep -qx /etc/mpanel-agent/agent.toml \
    || fail "agent.toml is not a conffile"
dpkg-deb --contents "$panel_deb" >"$work/panel.contents"
for f in ./usr/bin/mpanel ./lib/systemd/system/mpanel.service \
    ./lib/systemd/system/mpanel-worker.service ./etc/mpanel/mpanel.env; do
    grep -q " $f\$" "$work/panel.contents" || fail "panel package lacks $f"
done
dpkg-deb --ctrl-tarfile "$panel_deb" | tar -xO ./conffiles | grep -qx /etc/mpanel/mpanel.env \
    || fail "mpanel.env is not a conffile"

# A throwaway root with an empty dpkg database; maintainer scripts run outside a chroot with
# DPKG_ROOT set, which ours honour.
new_root() {
    local r=$1
    mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/log"
    : >"$r/var/lib/dpkg/status"
}
dpkg_in() { dpkg --root="$1" --force-script-chrootless --force-depends --log=/dev/null "${@:2}" 2>"$work/dpkg.err" || { cat "$work/dpkg.err"; return 1; }; }

verify_units() { # verify_units ROOT UNIT...
    local r=$1; shift
    local out
    # The standard targets (sysinit, multi-user …) come from this host; ours are not overwritten.
    cp -rn /lib/systemd/system/. "$r/lib/systemd/system/" 2>/dev/null || true
    out=$(systemd-analyze verify --root="$r" "$@" 2>&1) || { echo "$out"; fail "systemd-analyze verify $*"; }
    # systemd < 254 does not know the restart back-off keys; anything else is a finding.
    if echo "$out" | grep -v -E "Unknown key '(RestartSteps|RestartMaxDelaySec)'" | grep -q .; then
        echo "$out"; fail "systemd-analyze verify reported problems"
    fi
}

echo "== agent: install into a throwaway root"
root="$work/root"
new_root "$root"
dpkg_in "$root" -i "$agent_deb" >/dev/null
[ "$(stat -c %a "$root/usr/bin/mpanel-agent")" = 755 ] || fail "binary mode"
[ "$(stat -c %a "$root/var/lib/mpanel-agent")" = 700 ] || fail "state dir must be 0700"
[ -f "$root/etc/mpanel-agent/agent.toml" ] || fail "config installed"
"$root/usr/bin/mpanel-agent" --version >/dev/null || fail "the installed agent runs"
"$root/usr/bin/mpanel-agent" enroll --help >/dev/null || fail "the installed agent offers enroll"
verify_units "$root" /lib/systemd/system/mpanel-agent.service
grep -q '^ProtectSystem=strict' "$root/lib/systemd/system/mpanel-agent.service" || fail "hardening"

echo "== agent: upgrade keeps configuration and certificates"
echo "# edited by the operator" >>"$root/etc/mpanel-agent/agent.toml"
echo "not a real certificate" >"$root/var/lib/mpanel-agent/agent.crt"
dpkg_in "$root" --force-confold -i "$agent_deb" >/dev/null
grep -q "edited by the operator" "$root/etc/mpanel-agent/agent.toml" || fail "upgrade replaced the config"
[ -f "$root/var/lib/mpanel-agent/agent.crt" ] || fail "upgrade lost the certificate"

echo "== agent: purge removes configuration and state"
dpkg_in "$root" --purge mpanel-agent >/dev/null
[ ! -e "$root/etc/mpanel-agent" ] || fail "purge left /etc/mpanel-agent"
[ ! -e "$root/var/lib/mpanel-agent" ] || fail "purge left /var/lib/mpanel-agent"
[ ! -e "$root/usr/bin/mpanel-agent" ] || fail "purge left the binary"

echo "== panel: install into a throwaway root"
proot="$work/panel-root"
new_root "$proot"
dpkg_in "$proot" -i "$panel_deb" >/dev/null
[ "$(stat -c %a "$proot/etc/mpanel/mpanel.env")" = 640 ] || fail "env file must be 0640"
[ "$(stat -c %a "$proot/var/lib/mpanel")" = 750 ] || fail "panel state dir must be 0750"
verify_units "$proot" /lib/systemd/system/mpanel.service /lib/systemd/system/mpanel-worker.service
dpkg_in "$proot" --purge mpanel >/dev/null
[ ! -e "$proot/var/lib/mpanel" ] || fail "purge left /var/lib/mpanel"

echo "packaging: 1 passed, 0 failed"
