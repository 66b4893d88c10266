"""The `cnipy` command line (click); subsystems are imported only when their command runs."""
