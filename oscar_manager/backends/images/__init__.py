"""Service images on the local executor: pulled from OCI/Docker registries, kept content-addressed under the
data directory, unpacked once per image into a read-only root file system the sandbox runs scripts in."""
