"""What `mtl data prepare` needs to turn user files into the prepared format, and their hardening."""
