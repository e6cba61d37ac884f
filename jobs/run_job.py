"""RayJob / RayCronJob entrypoint: `python jobs/run_job.py CONFIG.yaml [--set key=value ...]`.

Thin on purpose: it parses arguments and calls the library. Exit code 0 when the job
finished (rows that failed on their own are in the output with their status), non-zero
when the job itself failed, so KubeRay's backoffLimit retries it; the pipeline's resume
makes a retry safe.
"""

import sys

from internvl_batch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
