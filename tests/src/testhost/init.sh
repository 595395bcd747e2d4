#!/bin/busybox sh
# husk-testhost L1 init (PID 1 of the emulated KVM host). Two stages:
#   stage 1 (/init in the initramfs): load modules, build a tmpfs root holding the 9p
#           shares at their host paths, then switch_root onto it (pivot_root, which the
#           jailer needs, fails while / is the initramfs rootfs);
#   stage 2 (/.husk/init in the tmpfs root): mount the API filesystems, check /dev/kvm,
#           run the session's run.sh with stdout/stderr into the control share, record
#           its exit status, power off.
# Lines starting "HUSK-L1" on the console are read by husk-testhost; keep their format.
B=/bin/busybox
[ "$1" = stage2 ] && B=/.husk/busybox
CTL=/.husk-ctl
P9=trans=virtio,version=9p2000.L,msize=512000

up() { $B cut -d' ' -f1 /proc/uptime; }
say() { echo "HUSK-L1: $*"; }
die() {
    # $1 = error code read by the host (kvm-amd, no-dev-kvm, setup), $2.. = message
    code=$1; shift
    echo "HUSK-L1-ERROR: $code: $*"
    $B dmesg 2>/dev/null | $B tail -n 25 | while IFS= read -r l; do echo "HUSK-L1-DMESG: $l"; done
    say poweroff
    $B sync
    $B poweroff -f
    while :; do $B sleep 1; done
}

if [ "$1" != stage2 ]; then
    $B mount -t proc proc /proc
    $B mount -t sysfs sys /sys
    $B mount -t devtmpfs dev /dev
    say "stage1 $(up)"
    # /modules/order: "<name> <group>" in dependency order; group 9p and kvm are fatal.
    while read -r name group; do
        if ! $B insmod "/modules/$name.ko" 2>/tmp/insmod.err; then
            err=$($B cat /tmp/insmod.err)
            case "$group" in
                kvm) die kvm-amd "loading module $name failed: $err" ;;
                9p) die setup "loading module $name failed: $err" ;;
                *) echo "HUSK-L1-WARN: optional module $name did not load: $err" ;;
            esac
        fi
    done </modules/order
    say "modules $(up)"
    [ -c /dev/kvm ] || die no-dev-kvm "kvm-amd loaded but /dev/kvm does not exist"

    R=/newroot
    $B mkdir -p $R
    $B mount -t tmpfs -o mode=0755 root $R || die setup "cannot mount the tmpfs root"
    # /tmp first: a share below /tmp (e.g. a test's temp dir) is mounted on top of it.
    $B mkdir -p $R$CTL $R/tmp
    $B mount -t tmpfs -o mode=1777 tmp $R/tmp || die setup "cannot mount /tmp"
    $B mount -t 9p -o $P9 husk_ctl $R$CTL || die setup "cannot mount the control share (9p)"
    # mounts: "<tag> <ro|rw> <cache> <absolute path>" (the path may contain spaces).
    while read -r tag mode cache path; do
        $B mkdir -p "$R$path"
        $B mount -t 9p -o "$P9,cache=$cache,$mode" "$tag" "$R$path" || die setup "cannot mount 9p share $tag at $path"
    done <$R$CTL/mounts
    for d in bin sbin lib lib64; do $B ln -s usr/$d $R/$d; done
    for d in proc sys dev tmp run var/tmp etc root; do $B mkdir -p $R/$d; done
    $B mkdir -p $R/.husk
    $B cp /bin/busybox $R/.husk/busybox
    $B cp /init $R/.husk/init
    $B umount /proc /sys /dev 2>/dev/null
    exec $B switch_root $R /.husk/busybox sh /.husk/init stage2
    die setup "switch_root failed"
fi

# ---- stage 2: / is a tmpfs ----
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts devpts /dev/pts
$B mount -t tmpfs -o mode=1777 shm /dev/shm
$B mount -t cgroup2 none /sys/fs/cgroup || echo "HUSK-L1-WARN: cannot mount cgroup2"
$B chmod 1777 /var/tmp
$B hostname husk-l1
$B ip link set lo up 2>/dev/null
[ -c /dev/kvm ] || die no-dev-kvm "/dev/kvm is missing after switch_root"
# Heartbeat: lets the host tell a hung L1 (no heartbeat) from a silent command.
( while :; do $B sleep 15; say "alive $(up)"; done ) &
hb=$!
say "exec $(up)"
$B env -i $B sh $CTL/run.sh </dev/null >$CTL/stdout 2>$CTL/stderr
rc=$?
kill $hb 2>/dev/null
echo "$rc" >$CTL/status
$B sync
say "exit $rc $(up)"
$B poweroff -f
while :; do $B sleep 1; done
