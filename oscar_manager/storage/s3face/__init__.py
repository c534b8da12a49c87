"""The S3 protocol as a server speaks it, for the S3 face of the local store (served by ``api/s3``).

Pure parts only: request signatures (``sigv4``), ``aws-chunked`` bodies and checksums (``chunked``),
listings (``listing``), XML answers and error documents (``s3xml``), multipart staging (``multipart``).
"""
