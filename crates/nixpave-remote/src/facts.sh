# nixpave facts: everything about a host in one round trip. POSIX sh; every probe tolerates
# a missing tool. Output: `key=value` lines and `@@begin NAME` … `@@end NAME` blocks.
exec 2>/dev/null
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
echo "kernel_name=$(uname -s)"
echo "uid=$(id -u)"
echo "user=$(id -un)"
for tool in sudo doas run0 nix nix-store systemctl kexec lsblk; do
  if command -v "$tool" >/dev/null; then echo "has_$tool=1"; else echo "has_$tool=0"; fi
done
# The tools a kexec installer's `kexec/run` and its launcher use on the old system.
tools=""
for tool in tar gzip cpio find setsid nohup mktemp readlink sort grep cat cp ip curl wget nixos-install nixos-enter; do
  command -v "$tool" >/dev/null && tools="$tools $tool"
done
echo "tools=$tools"
# Another mount namespace than PID 1's: a container or lab host sharing this machine's kernel.
echo "mnt_ns_init=$(readlink /proc/1/ns/mnt)"
echo "mnt_ns_self=$(readlink /proc/self/ns/mnt)"
if command -v nix >/dev/null; then
  echo "nix_version=$(nix --version | head -n1)"
  echo "nix_path=$(command -v nix)"
fi
if [ -d /run/systemd/system ]; then echo "systemd_booted=1"; else echo "systemd_booted=0"; fi
echo "mem_total_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
if [ -r /proc/sys/kernel/kexec_load_disabled ]; then
  echo "kexec_load_disabled=$(cat /proc/sys/kernel/kexec_load_disabled)"
fi
if [ -d /sys/firmware/efi ]; then echo "uefi=1"; else echo "uefi=0"; fi
sb=$(ls /sys/firmware/efi/efivars/SecureBoot-* | head -n1)
if [ -n "$sb" ] && [ -r "$sb" ]; then
  echo "secure_boot=$(od -An -tu1 -j4 -N1 "$sb" | tr -d ' ')"
fi
container=""
if command -v systemd-detect-virt >/dev/null; then container=$(systemd-detect-virt --container); fi
if [ -z "$container" ] || [ "$container" = none ]; then
  container=""
  if [ -f /.dockerenv ]; then container=docker
  elif [ -f /run/.containerenv ]; then container=podman
  elif tr '\0' '\n' < /proc/1/environ | grep -q '^container='; then
    container=$(tr '\0' '\n' < /proc/1/environ | sed -n 's/^container=//p' | head -n1)
  fi
fi
echo "container=$container"
if [ -e /etc/ssh/nixpave-lab-host ]; then echo "lab_host=1"; else echo "lab_host=0"; fi
if [ -e /nix/.ro-store ] || [ -e /iso ]; then echo "live_media=1"; else echo "live_media=0"; fi
echo "root_fstype=$(awk '$2 == "/" {t=$3} END {print t}' /proc/mounts)"
echo "@@begin os-release"
cat /etc/os-release || cat /usr/lib/os-release
echo "@@end os-release"
echo "@@begin lsblk"
lsblk --json --bytes -o "$1" || lsblk --json --bytes -o "$2"
echo "@@end lsblk"
echo "@@done"
