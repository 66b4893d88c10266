"""``python -m cnipy.proxy``: the same as ``cnipy proxy``."""

from cnipy.proxy.command import proxy_command

if __name__ == "__main__":
    proxy_command(prog_name="cnipy proxy")
