"""Offline bundles: everything an air-gapped machine needs to install libra-edge, in one folder.

`build.py` assembles a bundle on a connected machine (`libra-edge bundle`, `./install.sh
--bundle`); `install_offline.py` is the installer that travels inside it and runs on the
offline machine with the standard library only.
"""
