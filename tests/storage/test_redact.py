"""Redaction: credential-like keys anywhere in a config, credentials in URLs and in messages."""

import copy
import os

import pytest

from internvl_batch.config import JobConfig, SamplingConfig
from internvl_batch.media.fetch import FetchConfig
from internvl_batch.storage.redact import (
    REDACTED,
    is_secret_name,
    redact_text,
    redact_url,
    redacted,
    scrub,
    secret_values,
)

SECRET_KEY = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE-SESSION-TOKEN"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    "name",
    ["key", "secret", "token", "aws_secret_access_key", "aws_session_token", "AWS_ACCESS_KEY_ID", "password",
     "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "sig", "GoogleAccessId",
     "X-Goog-Signature", "access_token", "apiKey", "api_key", "Authorization", "client_secret", "private_key",
     "sas_token", "connection_string", "account_key", "Key-Pair-Id", "Policy", "PRIVATE_KEY_PEM", "privateKey"],
)  # fmt: skip
def test_credential_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["max_tokens", "num_output_tokens", "keyframe", "id_column", "endpoint_url", "region_name", "author",
     "X-Amz-Date", "X-Amz-Expires", "X-Amz-Algorithm", "Expires", "sv", "se", "anon", "max_bytes", "monkey",
     "PWD", "OLDPWD", "allowed_private_hosts", "private_network"],
)  # fmt: skip
def test_ordinary_names(name):
    assert not is_secret_name(name)


URLS = {
    "s3 presigned": (
        "https://bucket.s3.amazonaws.com/a%20b.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={ACCESS_KEY}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
        f"&X-Amz-Expires=3600&X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "https://bucket.s3.amazonaws.com/a%20b.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={REDACTED}&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
        f"&X-Amz-Security-Token={REDACTED}&X-Amz-SignedHeaders=host&X-Amz-Signature={REDACTED}",
    ),
    "gcs signed v2": (
        "https://storage.googleapis.com/b/o.jpg?GoogleAccessId=sa%40p.iam.gserviceaccount.com&Expires=1&Signature=abc%2Bdef",
        f"https://storage.googleapis.com/b/o.jpg?GoogleAccessId={REDACTED}&Expires=1&Signature={REDACTED}",
    ),
    "azure sas": (
        "https://acct.blob.core.windows.net/c/a.jpg?sv=2022-11-02&se=2026-01-01&sp=r&sig=abc%3D",
        f"https://acct.blob.core.windows.net/c/a.jpg?sv=2022-11-02&se=2026-01-01&sp=r&sig={REDACTED}",
    ),
    "userinfo": ("http://alice:hunter2@media.example:8080/a.jpg", f"http://{REDACTED}@media.example:8080/a.jpg"),
    "token in fragment": ("https://h/a.jpg#access_token=xyz&x=1", f"https://h/a.jpg#access_token={REDACTED}&x=1"),
    "nothing to hide": ("s3://bucket/images/a.jpg?versionId=3", "s3://bucket/images/a.jpg?versionId=3"),
    "local path": ("/data/images/key=1/a.jpg", "/data/images/key=1/a.jpg"),
}


@pytest.mark.parametrize("url, expected", URLS.values(), ids=URLS.keys())
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # idempotent


def test_redact_text_finds_urls_and_key_ids_inside_messages():
    url = URLS["s3 presigned"][0]
    message = f"FileNotFoundError: {url} (caused by ClientResponseError: 403, url=URL('{url}')) key {ACCESS_KEY}"
    clean = redact_text(message)
    for secret in (SESSION_TOKEN, ACCESS_KEY, "0123456789abcdef0123"):
        assert secret not in clean
    assert clean.startswith("FileNotFoundError: https://bucket.s3.amazonaws.com/a%20b.jpg?X-Amz-Algorithm")
    assert scrub(f"secret is {SECRET_KEY}!", [SECRET_KEY, "ab"]) == f"secret is {REDACTED}!"


def _options() -> dict:
    return {
        "s3": {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "token": SESSION_TOKEN,
            "client_kwargs": {"endpoint_url": "http://minio:hunter2@minio.storage:9000", "region_name": "eu-west-1"},
            "config_kwargs": {"max_pool_connections": 32},
        },
        "gs": {
            "token": {
                "type": "service_account",
                "private_key": "-----BEGIN PRIVATE KEY-----xyz",
                "client_email": "sa@p",
            }
        },
        "https": {"headers": {"Authorization": "Bearer abc.def", "User-Agent": "internvl-batch"}},
    }


def test_config_dump_masks_credentials_anywhere():
    cfg = JobConfig.model_validate(
        {
            "input": {"path": "s3://b/m.jsonl", "storage_options": {"key": ACCESS_KEY, "secret": SECRET_KEY}},
            "model": {"path": "s3://models/x", "storage_options": {"aws_session_token": SESSION_TOKEN}},
            "preprocess": {"fetch": {"storage_options": _options()}},
            "task": {"name": "cap", "preset": "short_caption", "sampling": {"max_tokens": 64}},
            "output": {"path": "s3://b/out", "storage_options": {"password": "pw-123456"}},
        }
    )
    dump = redacted(cfg)
    text = repr(dump)
    for secret in secret_values(cfg) + ["hunter2", "pw-123456", "Bearer abc.def"]:
        assert secret not in text, secret
    s3 = dump["preprocess"]["fetch"]["storage_options"]["s3"]
    assert s3["key"] == s3["secret"] == s3["token"] == REDACTED
    assert s3["client_kwargs"] == {"endpoint_url": f"http://{REDACTED}@minio.storage:9000", "region_name": "eu-west-1"}
    assert s3["config_kwargs"] == {"max_pool_connections": 32}
    gs = dump["preprocess"]["fetch"]["storage_options"]["gs"]["token"]
    assert gs == {"type": "service_account", "private_key": REDACTED, "client_email": "sa@p"}
    assert dump["preprocess"]["fetch"]["storage_options"]["https"]["headers"]["User-Agent"] == "internvl-batch"
    assert dump["task"][0]["sampling"]["max_tokens"] == 64
    assert dump["input"]["path"] == "s3://b/m.jsonl"


def test_redacted_leaves_the_original_alone_and_keeps_schemas_readable():
    options = _options()
    before = copy.deepcopy(options)
    redacted(FetchConfig(storage_options=options))
    assert options == before
    schema = {"type": "object", "properties": {"key": {"type": "string"}, "token": {"type": "integer"}}}
    sampling = SamplingConfig(json_schema=schema)
    assert redacted(sampling)["json_schema"] == schema


# -- what the driver prints ----------------------------------------------------------------------


def test_scrub_masks_credentials_not_the_rest(monkeypatch, tmp_path):
    from internvl_batch.storage.redact import scrub
    from tests.support.manifests import job_config

    options = {
        "key": "AKEYIDFORTESTS01",
        "secret": "s3cr3t-for-tests",
        "client_kwargs": {"endpoint_url": "http://minio:9000"},
    }
    cfg = job_config(tmp_path / "m.jsonl", tmp_path / "out", input={"storage_options": options},
                     preprocess={"fetch": {"allowed_private_hosts": ["minio"]}})  # fmt: skip
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-the-environment")
    text = (
        "failed with key AKEYIDFORTESTS01 / s3cr3t-for-tests, token token-from-the-environment, "
        f"url http://minio:9000/b/x.jpg?X-Amz-Signature=abcdef in {tmp_path} (cwd {os.getcwd()})"
    )
    clean = scrub(text, cfg.secret_values())
    for secret in ("AKEYIDFORTESTS01", "s3cr3t-for-tests", "token-from-the-environment", "abcdef"):
        assert secret not in clean
    assert "http://minio:9000/b/x.jpg?X-Amz-Signature=REDACTED" in clean  # the host stays: it names the item
    assert f"in {tmp_path} (cwd {os.getcwd()})" in clean
