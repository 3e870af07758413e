# Two disks: a small ESP on each (the second unused by default) and a ZFS mirror for the rest.
{ lib, disks ? [ "/dev/sda" "/dev/sdb" ], ... }:
{
  disko.devices = {
    disk = lib.genAttrs [ "a" "b" ] (n: {
      type = "disk";
      device = if n == "a" then builtins.elemAt disks 0 else builtins.elemAt disks 1;
      content = {
        type = "gpt";
        partitions = {
          ESP = {
            size = "512M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = if n == "a" then "/boot" else "/boot-fallback";
              mountOptions = [ "umask=0077" ];
            };
          };
          zfs = { size = "100%"; content = { type = "zfs"; pool = "rpool"; }; };
        };
      };
    });
    zpool.rpool = {
      type = "zpool";
      mode = "mirror";
      options.ashift = "12";
      rootFsOptions = { compression = "zstd"; acltype = "posixacl"; xattr = "sa"; mountpoint = "none"; };
      datasets = {
        root = { type = "zfs_fs"; mountpoint = "/"; options.mountpoint = "legacy"; };
        nix = { type = "zfs_fs"; mountpoint = "/nix"; options.mountpoint = "legacy"; };
        home = { type = "zfs_fs"; mountpoint = "/home"; options.mountpoint = "legacy"; };
      };
    };
  };
}
