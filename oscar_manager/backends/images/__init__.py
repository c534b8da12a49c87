"""Service images on the local executor: pulled from OCI/Docker registries, kept content-addressed under the
data directory (each layer checked against its digest when downloaded and against its diff_id when
unpacked), unpacked once per image into a read-only root file system the sandbox runs scripts in."""
