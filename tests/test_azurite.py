"""The Azurite helper itself (tests/helpers/azurite.py): a real Blob service on loopback, the
conditional create a shared cache relies on, stop/start on the same data, and nothing left
listening afterwards. Skips, with the reason, where Node.js is absent; installs Azurite into
.cache/azurite first where Node.js is present but Azurite is not (about a minute, once)."""

from __future__ import annotations

import hashlib
import os

import pytest
from azure.core.exceptions import ResourceExistsError, ServiceRequestError

from helpers import azurite as az_helper


@pytest.fixture(scope="module", autouse=True)
def azurite_installed():
    """Find azurite-blob, or install it (npm, once) where Node.js is: here, not at collection time."""
    exe, why = az_helper.ensure()
    if exe is None:
        pytest.skip(f"no Azurite: {why}")
    return exe


@pytest.fixture
def az(tmp_path):
    with az_helper.azurite(tmp_path) as server:
        yield server


def test_starts_on_loopback_and_a_blob_round_trips(az):
    assert az.url == f"http://127.0.0.1:{az.port}/devstoreaccount1"
    assert f"BlobEndpoint={az.url};" in az.connection_string
    assert "AccountName=devstoreaccount1;" in az.connection_string
    data = os.urandom(3 * 2**20 + 17)  # more than one block of the client's chunked upload
    container = az.client().create_container("cache")
    container.upload_blob("a/b.bin", data, max_concurrency=2)
    got = container.download_blob("a/b.bin").readall()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert [b.name for b in container.list_blobs()] == ["a/b.bin"]


def test_second_create_without_overwrite_answers_409(az):
    container = az.client().create_container("cache")
    container.upload_blob("key", b"first", overwrite=False)
    with pytest.raises(ResourceExistsError) as e:
        container.upload_blob("key", b"second", overwrite=False)
    assert e.value.status_code == 409
    assert container.download_blob("key").readall() == b"first"  # the loser changed nothing


def test_stop_fails_requests_promptly_and_start_keeps_the_data(az):
    container = az.client().create_container("cache")
    container.upload_blob("kept", b"still here")
    port, pid = az.port, az.proc.pid
    az.stop()  # bounded by its own grace, then SIGKILL
    assert not az_helper.listening(port)
    with pytest.raises(OSError):
        os.kill(pid, 0)  # reaped: no such process
    down = az.client(connection_timeout=2, retry_total=0).get_container_client("cache")
    with pytest.raises(ServiceRequestError):  # refused, not hung: the client's own timeout bounds it
        down.download_blob("kept").readall()
    az.start()
    assert az.port == port
    assert az.client().get_container_client("cache").download_blob("kept").readall() == b"still here"


def test_nothing_listens_after_the_context_manager(tmp_path):
    with az_helper.azurite(tmp_path) as server:
        port, pid = server.port, server.proc.pid
        assert az_helper.listening(port)
    assert not az_helper.listening(port)
    assert not server.running
    with pytest.raises(OSError):
        os.kill(pid, 0)


def test_stops_on_an_exception_too(tmp_path):
    with pytest.raises(KeyError), az_helper.azurite(tmp_path) as server:
        port = server.port
        raise KeyError("boom")
    assert not az_helper.listening(port)
