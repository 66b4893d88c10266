"""Start-up of a CNI executable: `python -I -S launch.py <plugin-name>`.

Runs without `site` for a fast start, so it puts the checkout and the virtualenv's site-packages on sys.path
itself, then hands over to the protocol layer. Nothing else is imported before the plugin needs it. A plugin that
can not be loaded (unknown name, broken install) still answers in CNI error JSON, never with a traceback.
"""

import os
import sys


def _main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    v = sys.version_info
    sys.path[0:0] = [root, f"{root}/.venv/lib/python{v[0]}.{v[1]}/site-packages"]
    from cnipy.cni.skel import Plugin, main, unloadable
    from cnipy.plugins.registry import load

    name = sys.argv[1] if len(sys.argv) > 1 else ""
    plugin: Plugin
    try:
        plugin = load(name)
    except Exception as exc:
        plugin = unloadable(name, exc)
    main(plugin)


if __name__ == "__main__":
    _main()
