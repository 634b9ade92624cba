"""Boot an image under QEMU, play Trove's side of an instance launch, check what the guest did."""
