"""Runs inside a build venv: prints its site-packages directory (sysconfig's purelib).
Used by toolchain.BuildVenv.site_packages. Stdlib only."""

import sysconfig

if __name__ == "__main__":
    print(sysconfig.get_paths()["purelib"])
