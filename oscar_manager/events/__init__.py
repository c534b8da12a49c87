"""Where events come from: the local folder watcher now, MinIO's listener next."""
