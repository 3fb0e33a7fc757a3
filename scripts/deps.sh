# Sourced by test.sh, bench.sh and demo.sh: installs what a fresh Debian machine with Node/npm lacks.
# ensure_deps: apt packages (etcd, reference CNI plugins, iproute2, ping, unshare, graphviz,
# openssl, containerd, runc, a C compiler) and npm ci when node_modules does not match
# package-lock.json.
ensure_deps() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v ip >/dev/null || need+=(iproute2)
  command -v ping >/dev/null || need+=(iputils-ping)
  command -v unshare >/dev/null || need+=(util-linux)
  command -v dot >/dev/null || need+=(graphviz)       # ratchet links --output dot is rendered with it
  command -v openssl >/dev/null || need+=(openssl)    # test certificates for the stand-in API and etcd
  # The containerd suite: a runtime and its OCI runtime, and a static C pause program.
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  { command -v cc >/dev/null && [ -f "$(cc -print-file-name=libc.a)" ]; } || need+=(gcc libc6-dev)
  if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || {
      echo "could not install ${need[*]}" >&2; return 1; }
  fi
  # npm ci only when the lockfile differs from the one node_modules was installed from.
  local lock_sum
  lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -x node_modules/.bin/bun ] || [ "$(cat node_modules/.ratchet-lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
    echo "== npm ci" >&2
    npm ci --no-audit --no-fund >&2 || return 1
    echo "$lock_sum" > node_modules/.ratchet-lock.sha256
  fi
}

# start_etcd NAME WORK: a throwaway 3-member etcd cluster on free loopback ports (as
# production runs it), data in WORK/etcd-N, logs in WORK/etcd-N.log. Sets etcd_pids, exports
# RATCHET_TEST_ETCD (the first member's URL) and RATCHET_TEST_ETCD_ENDPOINTS (all three,
# comma-separated), and waits until the cluster is healthy.
start_etcd() {
  local name="$1" work="$2" bun="node_modules/.bin/bun" ports i cluster="" urls=""
  # Six distinct free ports, held together while they are picked.
  ports=($("$bun" -e '
    const s = Array.from({ length: 6 }, () => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
    console.log(s.map((x) => x.port).join(" "));
    for (const x of s) x.stop(true);'))
  for i in 0 1 2; do cluster="$cluster${cluster:+,}$name-$i=http://127.0.0.1:${ports[$((3 + i))]}"; done
  etcd_pids=()
  for i in 0 1 2; do
    local client="http://127.0.0.1:${ports[$i]}" peer="http://127.0.0.1:${ports[$((3 + i))]}"
    urls="$urls${urls:+,}$client"
    etcd --name "$name-$i" --data-dir "$work/etcd-$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$work/etcd-$i.log" 2>&1 &
    etcd_pids+=($!)
  done
  echo "== etcd cluster on $urls" >&2
  export RATCHET_TEST_ETCD="http://127.0.0.1:${ports[0]}" RATCHET_TEST_ETCD_ENDPOINTS="$urls"
  for _ in $(seq 200); do
    "$bun" -e "
      const health = (u) => fetch(u + '/health').then((r) => r.json()).then((j) => j.health === 'true', () => false);
      process.exit((await Promise.all('$urls'.split(',').map(health))).every(Boolean) ? 0 : 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the etcd cluster did not become healthy; see $work/etcd-*.log" >&2
  return 1
}

# stop_etcd: stops the members start_etcd started.
stop_etcd() {
  local p
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${etcd_pids[@]}"; do wait "$p" 2>/dev/null; done
  etcd_pids=()
}

# ensure_vm_deps: what scripts/kernel-vm.sh needs to boot a test kernel: qemu (TCG, so no
# KVM is needed), a static busybox for the initramfs, and cpio to pack it.
ensure_vm_deps() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  command -v cpio >/dev/null || need+=(cpio)
  command -v depmod >/dev/null || need+=(kmod)   # modules.dep of the unpacked test kernel
  if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || {
      echo "could not install ${need[*]}" >&2; return 1; }
  fi
}

# vm_kernel CACHE: Debian's cloud kernel (the package linux-image-cloud-amd64 depends on),
# unpacked once under CACHE without being installed, so no bootloader or initramfs hook runs
# on this machine; depmod then writes its modules.dep there. Prints the directory holding its
# boot/vmlinuz-* and lib/modules/*/.
vm_kernel() {
  local cache="$1" pkg dir tmp
  kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
  pkg="$(kernel_pkg)"
  if [ -z "$pkg" ]; then
    apt-get update -qq >&2 || return 1
    pkg="$(kernel_pkg)"
  fi
  [ -n "$pkg" ] || { echo "no package provides linux-image-cloud-amd64" >&2; return 1; }
  dir="$cache/$pkg"
  if [ ! -e "$dir/.unpacked" ]; then
    echo "== unpack $pkg into $dir" >&2
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) &&
      rm -rf "$dir" && mkdir -p "$dir" && dpkg -x "$tmp"/"$pkg"_*.deb "$dir" &&
      depmod -b "$dir" "$(basename "$(ls -d "$dir"/lib/modules/*/)")" && touch "$dir/.unpacked"
    local rc=$?
    rm -rf "$tmp"
    [ "$rc" = 0 ] || { echo "could not download and unpack $pkg" >&2; return 1; }
  fi
  echo "$dir"
}

# containerd_leftovers WORK: the safety net for the containerd suite and benchmark after a
# crash: kills the pods of every shim whose containerd socket is under WORK (a shim is its
# pods' subreaper: they would outlive it), then every process naming WORK, then removes what
# runc and containerd would have: the pods' cgroups (<own cgroup>/<sandbox id>), the shims'
# sockets (containerd 1.6 keeps them in /run/containerd/s, named sha256(address/namespace/id))
# and the mounts under WORK (pod netns, rootfs, shm), deepest first.
containerd_leftovers() {
  local work="$1" shim pod pods=() cgs=() socks=() cg h
  for shim in $(pgrep -f -- "containerd-shim.* -address $work/"); do
    socks+=("/run/containerd/s/$(tr '\0' '\n' <"/proc/$shim/cmdline" 2>/dev/null |
      awk '/^-namespace$/{getline; ns=$0} /^-id$/{getline; id=$0} /^-address$/{getline; a=$0}
           END{printf "%s/%s/%s", a, ns, id}' | sha256sum | cut -d' ' -f1)")
    for pod in $(pgrep -P "$shim"); do
      pods+=("$pod")
      cgs+=($(cut -d: -f3 "/proc/$pod/cgroup" 2>/dev/null | grep -E '/[0-9a-f]{64}$'))
      kill -9 "$pod" 2>/dev/null
    done
  done
  pkill -f -- "$work/" 2>/dev/null
  for pod in "${pods[@]}"; do
    for _ in $(seq 20); do grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pod/status" || break; sleep 0.1; done
  done
  for cg in "${cgs[@]}"; do for h in /sys/fs/cgroup/*; do rmdir "$h$cg" 2>/dev/null; done; done
  rm -f "${socks[@]}"
  awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  return 0
}
