#!/bin/sh
# /init of the run-in-vm initramfs (busybox-static only).
# Mounts the host root (9p tag "hostroot", read-only) as the new root, with a
# tmpfs overlay (vm.root=overlay, default) or tmpfs on the writable places only
# (vm.root=ro), mounts the per-run I/O dir (9p tag "vmio") at /run/vm-io, runs
# /run/vm-io/cmd.sh chrooted into the host root, writes its exit status to
# /run/vm-io/status and powers off. All diagnostics go to the console (ttyS0).
export PATH=/bin:/sbin
R=/newroot
IO=$R/run/vm-io

die() {
	echo "vm-init: FATAL: $*" >/dev/console
	[ -d "$IO" ] && echo "init: $*" >"$IO/init-error" 2>/dev/null
	sync
	poweroff -f
	echo o >/proc/sysrq-trigger
	sleep 1000
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# Modules, in dependency order (list made at build time).
while read -r m; do
	insmod "/lib/modules/$m.ko" || die "insmod $m"
done </modules.list

# Kernel command line parameters of ours.
cache=loose rootmode=overlay msize=512000
for a in $(cat /proc/cmdline); do
	case "$a" in
	vm.cache=*) cache=${a#vm.cache=} ;;
	vm.root=*) rootmode=${a#vm.root=} ;;
	vm.msize=*) msize=${a#vm.msize=} ;;
	esac
done
o9p="trans=virtio,version=9p2000.L,msize=$msize"

mkdir -p /lower /upper $R
mount -t 9p -o "$o9p,ro,cache=$cache" hostroot /lower || die "mount hostroot"
if [ "$rootmode" = overlay ]; then
	mount -t tmpfs -o mode=755 tmpfs /upper || die "tmpfs upper"
	mkdir -p /upper/u /upper/w
	mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay $R \
		|| die "mount overlay"
else
	mount --bind /lower $R || die "bind root"
fi

mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $R/run || die "tmpfs /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/tmp || die "tmpfs /tmp"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/var/tmp 2>/dev/null
mount --move /dev $R/dev || die "move /dev"
mkdir -p $R/dev/pts $R/dev/shm 2>/dev/null
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts $R/dev/pts
[ -e $R/dev/ptmx ] || ln -s pts/ptmx $R/dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/dev/shm
ln -sf /proc/self/fd $R/dev/fd 2>/dev/null
mount --move /proc $R/proc || die "move /proc"
mount --move /sys $R/sys || die "move /sys"

mkdir -p $IO
mount -t 9p -o "$o9p,cache=none" vmio $IO || die "mount vmio"

# Extra read-write host directories (--share): lines "tag path".
if [ -f $IO/shares ]; then
	while read -r tag path; do
		[ -n "$tag" ] || continue
		mkdir -p "$R$path" 2>/dev/null
		mount -t 9p -o "$o9p,cache=none" "$tag" "$R$path" || die "mount share $path"
	done <$IO/shares
fi

ip link set lo up
hostname tessera-vm

cut -d' ' -f1 $R/proc/uptime >$IO/started
# ash's wait loop reaps any child, so orphans re-parented to PID 1 get reaped
# while the command runs.
chroot $R /bin/sh /run/vm-io/cmd.sh </dev/null >>$IO/stdout 2>>$IO/stderr
echo $? >$IO/status
cut -d' ' -f1 $R/proc/uptime >$IO/finished
sync
poweroff -f
echo o >/proc/sysrq-trigger
sleep 1000
