"""trove-image-assembler: build OpenStack Trove guest images in process with libguestfs."""

__version__ = "0.1.0"
