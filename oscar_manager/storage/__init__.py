"""Objects in buckets: the ``ObjectStore`` protocol and its adapters (local folders now, S3 next).

Each adapter owns its library and converts that library's errors into ``StorageError`` subclasses.
"""
