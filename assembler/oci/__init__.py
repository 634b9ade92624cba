"""Container images without a docker daemon: references, registries, archives, OCI layouts.

reference.py parses names, credentials.py reads docker's config.json, registry.py speaks the OCI
distribution API, image.py models one image, layout.py and archive.py read and write it on
disk, transfer.py moves it between a registry and a layout. Every digest is checked on read.
"""
