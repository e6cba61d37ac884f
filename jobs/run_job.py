"""`python jobs/run_job.py CONFIG.yaml [--set key=value ...]`: `internvl-batch run`, for direct use
(e.g. a RayJob of your own). The RayJobs in k8s/ use `internvl-rayjob` (internvl_batch/job/rayjob.py),
which adds the done check, the output lease, validation before any GPU pod and in-cluster retries.

Thin on purpose: it parses arguments and calls the library. Exit code 0 when the job
finished (rows that failed on their own are in the output with their status), non-zero
when the job itself failed; the pipeline's resume makes a retry safe.
"""

import sys

from internvl_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
