"""One real job for the package's end-to-end checks (metrics, report, timeline): a local Ray
cluster with a metrics endpoint, real readers and real fetch/decode/tile over local files
and a flaky HTTP server, the real sink, a stand-in engine stage."""

import http.server
import socket
import threading
from types import SimpleNamespace

import pytest

from tests.observe import jobs


@pytest.fixture(scope="package")
def metrics_port():
    import cloudpickle
    import ray

    import tests.observe.stand_ins as stand_ins
    from tests.support import stages

    cloudpickle.register_pickle_by_value(stages)
    cloudpickle.register_pickle_by_value(stand_ins)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port)
    yield port
    ray.shutdown()


@pytest.fixture(scope="package")
def flaky_http(tmp_path_factory):
    """Serves a directory; the first GET of each path answers 503. Yields (root dir, base URL)."""
    root = tmp_path_factory.mktemp("http")
    seen: set[str] = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):
            if self.path not in seen:
                seen.add(self.path)
                self.send_error(503, "try again")
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="package")
def observed_job(metrics_port, flaky_http, tmp_path_factory):
    """Two copies of tests/observe/jobs.py's rows (square and wide served over flaky HTTP),
    plus one row whose qa answer the stand-in engine fails (engine_error)."""
    from internvl_batch.job.runner import run_job
    from tests.observe.stand_ins import EngineStandIn

    tmp = tmp_path_factory.mktemp("observed")
    http_root, base = flaky_http
    media = jobs.write_media(http_root)
    media["square"], media["wide"] = f"{base}/square.png", f"{base}/wide.png"
    failing = {"id": "engine-fails", "image": media["tall"], "question": "fail-unless:/nonexistent/marker"}
    rows = jobs.write_manifest(tmp / "m.jsonl", media, repeat=2, extra=(failing,))
    fetch = {"allowed_private_hosts": ["127.0.0.1"], "backoff_initial_s": 0.0}
    cfg = jobs.job_config(tmp / "m.jsonl", tmp / "out", preprocess={"fetch": fetch})
    summary = run_job(cfg, stages={"inference": EngineStandIn})
    assert summary.finished
    return SimpleNamespace(summary=summary, out=tmp / "out", rows=rows, cfg=cfg)
