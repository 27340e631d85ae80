#!/usr/bin/env bash
# Checks the static flox-activate in an otherwise empty root: no libc, no /proc, no /dev,
# only the binary, a fake environment (bash-static as its bin/bash) and busybox-static as the
# image's /bin/sh and /bin/env. Run as root from the repository root:
#   crates/activator/tests/static-chroot.sh
# Builds the binary as the node ships it unless FLOX_ACTIVATE_BIN names one.
set -euo pipefail

bin="${FLOX_ACTIVATE_BIN:-}"
if [ -z "$bin" ]; then
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q -p flox-activate --target x86_64-unknown-linux-gnu --release
  bin=target/x86_64-unknown-linux-gnu/release/flox-activate
fi
if ! ldd "$bin" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
  echo "FAIL: $bin is dynamically linked" >&2
  exit 1
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/run/flox/env/activate.d" "$root/run/flox/env/bin" "$root/run/flox/cache" "$root/bin"
install -m 0755 "$bin" "$root/run/flox/activate"
install -m 0755 /bin/bash-static "$root/run/flox/env/bin/bash"
install -m 0755 /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
ln -s busybox "$root/bin/env"
cat >"$root/run/flox/env/activate.d/imageless.json" <<'EOF'
{"version":1,"mode":"run","vars":[["GREETING","hello"],["MESSAGE","${GREETING}!"]],
 "hook_on_activate":"echo hook-ran\nexport FROM_HOOK=\"$MESSAGE from hook\"\n",
 "profile":{"common":null,"bash":null,"zsh":null,"fish":null,"tcsh":null},"cuda_detection":true}
EOF

unshare="$(command -v unshare)"
chroot="$(command -v chroot)"
run() {
  env -i PATH=/bin FLOX_ENV_DESCRIPTION=owner/name FLOX_DISABLE_METRICS=1 \
    "$unshare" -m "$chroot" "$root" /run/flox/activate -- "$@"
}

out="$(run env 2>"$root/stderr")" || { echo "FAIL: activation: $(cat "$root/stderr")" >&2; exit 1; }
grep -qx 'MESSAGE=hello!' <<<"$out" || { echo "FAIL: MESSAGE: $out" >&2; exit 1; }
grep -qx 'FROM_HOOK=hello! from hook' <<<"$out" || { echo "FAIL: FROM_HOOK: $out" >&2; exit 1; }
grep -qx 'PATH=/run/flox/env/bin:/bin' <<<"$out" || { echo "FAIL: PATH: $out" >&2; exit 1; }
grep -qx 'FLOX_DISABLE_METRICS=1' <<<"$out" || { echo "FAIL: metrics: $out" >&2; exit 1; }
grep -qx 'hook-ran' "$root/stderr" || { echo "FAIL: hook stdout not on stderr" >&2; exit 1; }
! grep -q 'hook-ran' <<<"$out" || { echo "FAIL: hook stdout on stdout" >&2; exit 1; }

set +e
run no-such-command 2>"$root/stderr"
status=$?
set -e
[ "$status" -eq 127 ] || { echo "FAIL: not-found status $status" >&2; exit 1; }
grep -qx 'no-such-command: command not found in environment owner/name' "$root/stderr" \
  || { echo "FAIL: not-found message: $(cat "$root/stderr")" >&2; exit 1; }

# Without a hook and with literal vars no bash may run: remove it and still succeed.
rm "$root/run/flox/env/bin/bash"
echo '{"version":1,"mode":"dev","vars":[["A","plain"]],"hook_on_activate":null,
 "profile":{"common":null,"bash":null,"zsh":null,"fish":null,"tcsh":null},"cuda_detection":true}' \
  >"$root/run/flox/env/activate.d/imageless.json"
out="$(run sh -c 'echo "$A $CPATH"' 2>"$root/stderr")" || { echo "FAIL: no-bash run: $(cat "$root/stderr")" >&2; exit 1; }
[ "$out" = "plain /run/flox/env/include" ] || { echo "FAIL: no-bash run: $out" >&2; exit 1; }

# Start-to-exec time without a hook (the activator's own work; `true` is a busybox applet).
ln -s busybox "$root/bin/true"
start=$(date +%s%N)
for _ in $(seq 100); do run true; done
end=$(date +%s%N)
echo "ok: static activator works in an empty root; 100 runs incl. unshare+chroot+busybox: $(( (end - start) / 100000 ))us each"
