# A typical server layout: EFI system partition, swap and an ext4 root on one disk,
# plus a btrfs data disk with subvolumes.
{
  disk.main = {
    type = "disk";
    device = "/dev/vda";
    content = {
      type = "gpt";
      partitions = {
        ESP = {
          size = "512M";
          type = "EF00";
          content = { type = "filesystem"; format = "vfat"; mountpoint = "/boot"; mountOptions = [ "umask=0077" ]; };
        };
        swap = { size = "1G"; content = { type = "swap"; }; };
        root = {
          size = "100%";
          content = { type = "filesystem"; format = "ext4"; mountpoint = "/"; };
        };
      };
    };
  };
  disk.data = {
    type = "disk";
    device = "/dev/vdb";
    content = {
      type = "gpt";
      partitions.data = {
        size = "100%";
        content = {
          type = "btrfs";
          extraArgs = [ "-f" ];
          subvolumes = {
            "/srv" = { mountpoint = "/srv"; mountOptions = [ "compress=zstd" ]; };
            "/backup" = { mountpoint = "/backup"; };
          };
        };
      };
    };
  };
}
