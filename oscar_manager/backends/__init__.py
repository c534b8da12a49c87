"""Where jobs run: the ``Backend`` protocol, the local executor and Kubernetes."""
