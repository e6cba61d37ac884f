"""Static checks of the deployment: k8s/ manifests, docker/ and the GPU job configs (no Kubernetes,
Docker engine or GPU is needed, and none is used).

- Every KubeRay resource (RayJob, RayCronJob, RayCluster) is validated against its CRD's
  `spec.versions[v1].schema.openAPIV3Schema` (from $KUBERAY_CRD_DIR, never copied into the
  repo: its main-branch snapshot and the released v1.6.2 and v1.7.0 under releases/; each
  resource against the release it claims and the later ones), strictly: unknown fields are
  errors, as `kubectl apply` (strict field validation) makes them. Negative tests prove the
  validator rejects broken manifests.
- Every pod passes the "restricted" Pod Security Standard (pod_security.py).
- What a schema can't see: the entrypoint (`internvl-rayjob`, run for real with a
  stand-in `internvl-batch`) validates before it runs and retries only what may pass; the
  job config it reads is a mounted ConfigMap that passes `internvl-batch validate
  --config-only`; GPU limits fit tensor_parallel_size and runtime.replicas; the GPU pods
  fit every common 8-GPU node type; the head takes no GPU; the weights sit in a node-wide
  cache; no GPU pod starts before validation; a NetworkPolicy guards the dashboard; the
  image's Ray is the pinned Ray and its CUDA torch's; credentials only come from Secrets;
  /dev/shm is memory-backed; the nightly RayCronJob names its night and can neither
  overlap the next night nor change its date.

Without $KUBERAY_CRD_DIR the schema tests skip locally and fail in CI (CI set).

Helpers: manifests.py (loading k8s/, walking pod specs), crd.py (CRDs -> strict
validators), dockerfile.py (what the image holds), checks.py and cluster_checks.py (the
checks a schema can't express), pod_security.py (the restricted profile), node_fit.py (node
types and the sizing arithmetic), entrypoint_run.py (runs an entrypoint as the head does);
shared fixtures in conftest.py. Tests: test_documents.py, test_crd_validation.py,
test_operator_versions.py, test_pod_security.py, test_deploy_checks.py,
test_cluster_hardening.py, test_node_fit.py, test_operations.py (alerts, dashboard, PodMonitor,
disruption budget), test_rayjob_entrypoint.py, test_image.py, test_job_configs.py.
"""
