"""No credential reaches a media error: not its text, repr, pickle (what Ray ships) or formatted
traceback. Presigned and userinfo URLs over real HTTP; S3 credentials in storage_options and in
the environment against the real S3 server."""

import pickle
import traceback

import pytest

from internvl_batch.media.decode import DecodeConfig, decode_image
from internvl_batch.media.errors import FetchError, MediaError, MediaNotFound, URLNotAllowed
from internvl_batch.media.fetch import FetchConfig, Fetcher
from internvl_batch.media.video import sample_frames

SIGNATURE = "5ec2e7e5ec2e7e5ec2e7e5ec2e7e5ec2e7e5ec2e7e5ec2e7e5ec2e7e5ec2e7e5"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"
CREDENTIAL = "AKIDEXAMPLEKEYID0000"
PASSWORD = "correct-horse-battery-staple"
QUERY = (
    f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20260101T000000Z&X-Amz-Expires=600&X-Amz-Security-Token={SESSION_TOKEN}"
    f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)


def artifacts(error: BaseException) -> str:
    """Everything an error can turn into: row text, repr, Ray's pickle, a logged traceback."""
    return "\n".join(
        [str(error), repr(error), pickle.dumps(error).decode("latin-1"), "".join(traceback.format_exception(error))]
    )


def assert_clean(error: BaseException, *secrets: str) -> None:
    text = artifacts(error)
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into {type(error).__name__}"


def http_fetcher(**config) -> Fetcher:
    config = {"allowed_private_hosts": ["127.0.0.0/8"], "max_attempts": 2, **config}
    return Fetcher(FetchConfig(**config), sleep=lambda s: None)


@pytest.fixture(autouse=True)
def fresh(http_server):
    http_server.reset()


def test_presigned_url_errors_keep_no_signature(http_server):
    fetcher = http_fetcher()
    missing = f"{http_server.url}/missing.jpg{QUERY}"
    with pytest.raises(MediaNotFound) as info:
        fetcher.fetch(missing)
    assert_clean(info.value, SIGNATURE, SESSION_TOKEN, CREDENTIAL)
    # The item is still named, minus its secrets.
    assert str(info.value).startswith(f"{http_server.url}/missing.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256")

    http_server.failures["/flaky.jpg"] = 5
    with pytest.raises(FetchError, match="giving up after 2 attempts") as info:
        fetcher.fetch(f"{http_server.url}/flaky.jpg{QUERY}")
    assert_clean(info.value, SIGNATURE, SESSION_TOKEN, CREDENTIAL)


def test_userinfo_url_errors_keep_no_password(http_server):
    with pytest.raises(MediaNotFound) as info:
        http_fetcher().fetch(f"http://alice:{PASSWORD}@127.0.0.1:{http_server.port}/missing.jpg")
    assert_clean(info.value, PASSWORD)
    assert "alice" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://169.254.169.254/latest/meta-data/{QUERY}",
        f"ftp://host/a.jpg{QUERY}",
        f"http://bob:{PASSWORD}@10.0.0.1/a.jpg",
    ],
)
def test_refused_url_errors_keep_no_secret(url):
    with pytest.raises(URLNotAllowed) as info:
        Fetcher().fetch(url)
    assert_clean(info.value, SIGNATURE, SESSION_TOKEN, CREDENTIAL, PASSWORD)


def test_decode_and_video_errors_keep_no_secret():
    source = f"https://cdn.example/a.jpg{QUERY}"
    errors = []
    for call in (
        lambda: decode_image(b"not an image at all", DecodeConfig(), source=source),
        lambda: decode_image(b"", DecodeConfig(), source=source),
        lambda: sample_frames(b"not a video either" * 50, name=source),
    ):
        with pytest.raises(MediaError) as info:
            call()
        errors.append(info.value)
    for error in errors:
        assert_clean(error, SIGNATURE, SESSION_TOKEN, CREDENTIAL)


# -- S3 credentials ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_object(s3):
    s3.create_bucket("secret-tests")
    return s3.put_object("secret-tests", "a.jpg", b"data")


def test_s3_credentials_in_storage_options_stay_out_of_errors(s3, secret_object):
    wrong = {"key": "WRONGKEYID-NOT-IN-ERRORS", "secret": "wrong-secret-NOT-IN-ERRORS", "token": SESSION_TOKEN}
    for options in (
        {**s3.storage_options, "secret": wrong["secret"], "token": wrong["token"]},  # signature mismatch
        {**s3.storage_options, **wrong},  # unknown key id
    ):
        fetcher = Fetcher(FetchConfig(storage_options={"s3": {**options, "skip_instance_cache": True}}))
        with pytest.raises(FetchError) as info:
            fetcher.fetch(secret_object)
        assert_clean(info.value, *wrong.values(), s3.secret_key)
    right = Fetcher(FetchConfig(storage_options={"s3": s3.storage_options}))
    with pytest.raises(MediaNotFound) as info:
        right.fetch("s3://secret-tests/missing.jpg")
    assert_clean(info.value, s3.secret_key, s3.access_key)


def test_s3_credentials_in_the_environment_stay_out_of_errors(s3, secret_object, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEYID-NOT-IN-ERRORS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-NOT-IN-ERRORS")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token-NOT-IN-ERRORS")
    options = {"client_kwargs": s3.storage_options["client_kwargs"], "skip_instance_cache": True}
    with pytest.raises(FetchError) as info:
        Fetcher(FetchConfig(storage_options={"s3": options})).fetch(secret_object)
    assert_clean(info.value, "ENVKEYID-NOT-IN-ERRORS", "env-secret-NOT-IN-ERRORS", "env-token-NOT-IN-ERRORS")
