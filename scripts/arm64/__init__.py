"""The emulated arm64 check: rootfs.sh, run.sh, detect.py (both platforms), compare.py, check.py."""
