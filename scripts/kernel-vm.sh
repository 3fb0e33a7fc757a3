#!/usr/bin/env bash
# Proves netem on a kernel that has it (this machine's may not): boots Debian's cloud kernel
# in qemu under TCG (no KVM needed) with a small initramfs built here: busybox, iproute2's ip
# and tc, the modules veth, sch_tbf and sch_netem, bun, and test/vm/netem-vm.ts bundled. That
# program applies netem through src/netlink and checks it with tc and ping; the VM then prints
# "RATCHET-VM: PASS" or "RATCHET-VM: FAIL" on its console and powers off.
# Exit 0 only when the VM printed PASS; 77 when skipped on request (RATCHET_SKIP_VM=1);
# anything else (qemu or the kernel not running, a failed check, a timeout) is a failure.
#   ./scripts/kernel-vm.sh        (as root; RATCHET_VM_TIMEOUT, default 90 s)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
say() { printf '== kernel-vm: %s\n' "$*" >&2; }
fail() { printf 'kernel-vm: FAIL: %s\n' "$*" >&2; exit 1; }

if [ "${RATCHET_SKIP_VM:-}" = 1 ]; then
  echo "kernel-vm: SKIPPED on request (RATCHET_SKIP_VM=1): netem was not proven in this run" >&2
  exit 77
fi
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages)"
. "$repo/scripts/deps.sh"
ensure_vm_deps || fail "could not install qemu-system-x86, busybox-static and cpio"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 is missing"
kdir="$(vm_kernel /var/cache/ratchet/vm-kernel)" || fail "no test kernel"
vmlinuz="$(ls "$kdir"/boot/vmlinuz-* 2>/dev/null | head -1)"
moddir="$(ls -d "$kdir"/lib/modules/*/ 2>/dev/null | head -1)"
[ -f "$vmlinuz" ] && [ -d "$moddir" ] || fail "no vmlinuz or modules under $kdir"
BUN="$(readlink -f "$repo/node_modules/.bin/bun")"
[ -x "$BUN" ] || fail "no bun binary under node_modules"

work="$(mktemp -d "${RATCHET_TEST_WORK:-/tmp}/ratchet-vm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,modules,usr/sbin,var}
ln -s ../run "$root/var/run"

# A program and the libraries ldd names, each at the path the dynamic loader looks for it.
copy_with_libs() {
  local src="$1" dest="$2" lib
  mkdir -p "$(dirname "$root$dest")" && cp -L "$src" "$root$dest" || return 1
  for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$(dirname "$root$lib")" && cp -L "$lib" "$root$lib" || return 1
  done
}

say "initramfs in $work"
cp /bin/busybox "$root/bin/busybox" || fail "no /bin/busybox"
ldd "$root/bin/busybox" >/dev/null 2>&1 && fail "/bin/busybox is not static (install busybox-static)"
copy_with_libs "$(command -v ip)" /usr/sbin/ip || fail "cannot copy ip"
copy_with_libs "$(command -v tc)" /usr/sbin/tc || fail "cannot copy tc"
copy_with_libs "$BUN" /bun || fail "cannot copy bun"
"$BUN" build test/vm/netem-vm.ts --target=bun --outfile "$root/netem-vm.js" >/dev/null || fail "bun build"

# Each module after the ones it depends on (modules.dep), decompressed for busybox's insmod.
declare -A loaded=()
add_module() {
  local rel="$1" dep deps out
  [ -n "${loaded[$rel]:-}" ] && return 0
  deps="$(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$moddir/modules.dep")"
  for dep in $deps; do add_module "$dep" || return 1; done
  out="$root/modules/$(basename "${rel%.ko*}").ko"
  case "$rel" in
    *.ko.xz) xz -dc "$moddir/$rel" >"$out" ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" >"$out" ;;
    *.ko.gz) gzip -dc "$moddir/$rel" >"$out" ;;
    *) cp "$moddir/$rel" "$out" ;;
  esac || return 1
  basename "$out" >>"$root/modules/order"
  loaded[$rel]=1
}
for m in veth sch_tbf sch_netem; do
  rel="$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n) }
    n == m { print $1; exit }' "$moddir/modules.dep")"
  [ -n "$rel" ] || fail "module $m not found in $moddir"
  add_module "$rel" || fail "cannot copy module $m"
done

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin HOME=/tmp BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
ok=1
for m in $(cat /modules/order); do insmod "/modules/$m" || { echo "insmod $m failed"; ok=0; }; done
echo "kernel $(uname -r); modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
if [ "$ok" = 1 ] && /bun /netem-vm.js; then echo "RATCHET-VM: PASS"; else echo "RATCHET-VM: FAIL"; fi
sync
reboot -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd.cpio" || fail "cpio"
say "initramfs $(du -m "$work/initrd.cpio" | cut -f1) MiB; booting $(basename "$vmlinuz") under TCG"

start=$SECONDS
timeout --kill-after=5 "${RATCHET_VM_TIMEOUT:-90}" qemu-system-x86_64 \
  -accel tcg -cpu max -m 1024 -smp 1 -nographic -no-reboot -nic none \
  -kernel "$vmlinuz" -initrd "$work/initrd.cpio" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  </dev/null >"$work/console.log" 2>&1
rc=$?
# The console, without the firmware's terminal escapes and blank lines.
tr -d '\r' <"$work/console.log" | sed 's/\x1b[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | grep -v '^\s*$' |
  sed 's/^/  vm| /' >&2
say "qemu exited with $rc after $((SECONDS - start)) s"
[ "$rc" = 124 ] || [ "$rc" = 137 ] && fail "the VM did not finish within ${RATCHET_VM_TIMEOUT:-90} s"
tr -d '\r' <"$work/console.log" | grep -qx 'RATCHET-VM: PASS' || fail "the VM did not print its PASS line"
echo "kernel-vm: PASS (netem through src/netlink on $(basename "$vmlinuz"))" >&2
