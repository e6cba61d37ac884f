"""The bottom layer: talking to storage safely. Which errors are worth retrying
(`classify`), bounded retries with backoff for the job's own I/O (`retry`), and credentials
kept out of everything the job writes or prints (`redact`). Imports nothing of the package."""
