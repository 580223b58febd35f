"""The `xgate` command line."""
