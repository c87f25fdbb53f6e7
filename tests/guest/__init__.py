"""A tiny real guest (kernel + busybox initramfs) for integration tests."""
