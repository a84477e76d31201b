#!/bin/busybox sh
# /init of the test VMs (hack/kernels/run.sh builds it into the initramfs):
# mounts what the suites need, runs the steps of /plan/<name> (name from
# the kernel command line, psk=), prints one "@@@ RESULT" line per step on
# the serial console, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/shm /tmp /sys/fs/cgroup /sys/fs/bpf
mount -t tmpfs tmp /tmp
mount -t tmpfs shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
for m in /modules/*.ko; do [ -f "$m" ] && insmod "$m"; done
name=$(sed -n 's/.*psk=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "@@@ BOOTED $name $(uname -r) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null) $(cut -d' ' -f1 /proc/uptime)s"
# CI=true: a missing tool fails. PODSCOPE_KERNEL_MATRIX: a feature this
# kernel lacks skips with its reason (testenv.SkipKernelLacks).
export CI=true PODSCOPE_KERNEL_MATRIX="$name" HOME=/tmp TMPDIR=/tmp
while read -r step timeout cmd; do
  case "$step" in ''|'#'*) continue ;; esac
  echo "@@@ STEP $step"
  start=$(cut -d' ' -f1 /proc/uptime)
  timeout "$timeout" sh -c "$cmd" 2>&1
  rc=$?
  end=$(cut -d' ' -f1 /proc/uptime)
  secs=$(echo "$end $start" | awk '{printf "%.0f", $1-$2}')
  if [ $rc -eq 0 ]; then r=PASS; else r=FAIL; fi
  echo "@@@ RESULT $step $r ${secs}s rc=$rc"
done < "/plan/$name"
echo "@@@ DONE $name"
sync
poweroff -f
