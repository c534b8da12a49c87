"""The S3 face of the local store: an S3 endpoint for the clients, on a port of its own."""
