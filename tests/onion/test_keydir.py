"""key_dir preparation: private directory, client-auth files gatekeep owns."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gatekeep.onion.control import TorError
from gatekeep.onion.hsconf import auth_file_name
from gatekeep.onion.keydir import prepare_key_dir

ALICE = "descriptor:x25519:" + "A" * 52
BOB = "descriptor:x25519:" + "B" * 52


def auth_files(key_dir: Path) -> dict[str, str]:
    clients = key_dir / "authorized_clients"
    return {p.name: p.read_text() for p in clients.iterdir()} if clients.exists() else {}


def test_creates_a_private_directory(tmp_path: Path) -> None:
    key_dir = tmp_path / "onion"
    prepare_key_dir(str(key_dir), [], create=True)
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert auth_files(key_dir) == {}


def test_leaves_a_missing_directory_to_a_running_tor(tmp_path: Path) -> None:
    key_dir = tmp_path / "onion"
    prepare_key_dir(str(key_dir), [], create=False)
    assert not key_dir.exists()


def test_writes_and_then_retires_client_auth(tmp_path: Path) -> None:
    key_dir = tmp_path / "onion"
    prepare_key_dir(str(key_dir), [ALICE, BOB], create=False)
    assert auth_files(key_dir) == {auth_file_name(ALICE): ALICE + "\n",
                                   auth_file_name(BOB): BOB + "\n"}
    mode = (key_dir / "authorized_clients" / auth_file_name(ALICE)).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    prepare_key_dir(str(key_dir), [BOB], create=False)
    assert auth_files(key_dir) == {auth_file_name(BOB): BOB + "\n"}
    prepare_key_dir(str(key_dir), [], create=False)
    assert auth_files(key_dir) == {}


def test_refuses_a_client_file_it_did_not_write(tmp_path: Path) -> None:
    clients = tmp_path / "onion" / "authorized_clients"
    clients.mkdir(parents=True)
    (clients / "carol.auth").write_text(ALICE + "\n")
    (clients / "notes.txt").write_text("not read by tor")
    with pytest.raises(TorError, match=r"holds carol\.auth, which client_auth does not list"):
        prepare_key_dir(str(tmp_path / "onion"), [BOB], create=True)
    assert not (clients / auth_file_name(BOB)).exists()  # nothing half-done


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TorError, match=r"cannot create key_dir .*/file/onion"):
        prepare_key_dir(str(blocker / "onion"), [ALICE], create=True)
