"""The job side: stage the input in, run the user's script, stage the outputs out, render the response.

It honours the faas-supervisor contract, so OSCAR scripts run unchanged: ``INPUT_FILE_PATH``,
``TMP_INPUT_DIR``, ``TMP_OUTPUT_DIR``, ``STORAGE_OBJECT_KEY``, ``EVENT_TIME``, ``EVENT`` (unset for a body
over 64 KiB, which the script reads at ``INPUT_FILE_PATH``), output prefix and suffix filters, and the
sync response (one output file base64-encoded, several as a base64 zip, none: the script's output). The
functions are used in-process by the local backend (with the manager's own storage clients) and by the
command-line entry point that runs inside Kubernetes pods.
"""
