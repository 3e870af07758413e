{ name = "v1"; brokenHost = ""; }
