"""Static checks of the deployment: k8s/ manifests, docker/Dockerfile and the GPU job configs.

- Every KubeRay resource (RayJob, RayCronJob, RayCluster) is validated against its CRD's
  `spec.versions[v1].schema.openAPIV3Schema` (from $KUBERAY_CRD_DIR, never copied into the
  repo), strictly: unknown fields are errors, as `kubectl apply` (strict field
  validation) makes them. Negative tests prove the validator rejects broken manifests.
- What a schema can't see: the entrypoint's script is in the image, the job config it reads
  is a mounted ConfigMap that passes `internvl-batch validate --config-only`, GPU limits
  fit tensor_parallel_size and runtime.replicas, the image's Ray equals the pinned Ray,
  credentials only come from Secrets, /dev/shm is memory-backed, and the nightly
  RayCronJob can neither overlap the next night nor change its date between retries.

Without $KUBERAY_CRD_DIR the schema tests skip locally and fail in CI (CI set).

Helpers: manifests.py (loading k8s/, walking pod specs), crd.py (CRDs -> strict
validators), dockerfile.py (what the image holds), checks.py (the checks a schema can't
express); shared fixtures in conftest.py. Tests: test_documents.py, test_crd_validation.py,
test_deploy_checks.py, test_image.py, test_job_configs.py.
"""
