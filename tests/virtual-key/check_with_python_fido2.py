#!/usr/bin/env python3
"""End-to-end check of tessera-virtual-key with Yubico's python-fido2, an independent platform.

Needs a kernel with uhid and root (run it inside the test VM), python-fido2 2.x, and the
binary built (`cargo build -p tessera-virtual-key`). It starts the virtual key, then through
/dev/hidrawN: lists the device, reads getInfo, sets the PIN, gets PIN tokens with protocols two
and one, makes a discoverable credential (checking its packed self attestation), gets an assertion
(checking its signature and user handle), shows a wrong PIN costing a retry, and checks the state
file. Then two short runs: a touch that never comes (USER_ACTION_TIMEOUT) and the key pulled out
mid-ceremony. Prints one line per step; exits non-zero on the first failure.

    check_with_python_fido2.py [--binary PATH] [--workdir DIR]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

from fido2.attestation import AttestationType, PackedAttestation
from fido2.cose import CoseKey
from fido2.ctap import CtapError
from fido2.ctap2 import ClientPin, Ctap2
from fido2.ctap2.pin import PinProtocolV1, PinProtocolV2
from fido2.hid import CtapHidDevice

RP = {"id": "tessera.example", "name": "Tessera"}
USER = {"id": b"user-handle-alice", "name": "alice", "displayName": "Alice"}
ES256 = [{"type": "public-key", "alg": -7}]
PIN = "1234"


def step(message):
    print(f"  {message}", flush=True)


def start_key(binary, *args):
    proc = subprocess.Popen(
        [binary, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"the virtual key did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def stop_key(proc):
    proc.stdin.close()  # stdin closing unplugs the key
    proc.wait(timeout=30)


def open_device(path):
    for _ in range(100):
        for dev in CtapHidDevice.list_devices():
            if dev.descriptor.path == path:
                return dev
        time.sleep(0.05)
    raise SystemExit(f"python-fido2 does not list {path}")


def main_check(binary, workdir):
    state_file = os.path.join(workdir, "key.json")
    proc, path = start_key(
        binary, "--state", state_file, "--serial", "py-check-1", "--touch", "after:300"
    )
    print(f"virtual key at {path}")
    try:
        dev = open_device(path)
        d = dev.descriptor
        step(
            f"listed: path={d.path} vid:pid={d.vid:04x}:{d.pid:04x} "
            f"product={d.product_name!r} serial={d.serial_number!r} "
            f"report sizes in/out={d.report_size_in}/{d.report_size_out}"
        )
        step(f"CTAPHID: version={dev.version} device_version={dev.device_version} capabilities={dev.capabilities:#04x}")
        dev.ping(b"ping-pong")
        step("PING echoed")

        ctap = Ctap2(dev)
        info = ctap.get_info()
        step(
            f"getInfo: versions={info.versions} aaguid={info.aaguid} options={info.options} "
            f"pinUvAuthProtocols={info.pin_uv_protocols} maxMsgSize={info.max_msg_size}"
        )
        assert info.options.get("clientPin") is False, info.options

        pin2 = ClientPin(ctap, PinProtocolV2())
        step(f"PIN retries before setting it: {pin2.get_pin_retries()}")
        pin2.set_pin(PIN)
        info = ctap.get_info()
        step(f"setPIN ok; getInfo clientPin={info.options.get('clientPin')}")
        assert info.options.get("clientPin") is True

        # makeCredential, discoverable, with a protocol-two token for makeCredential.
        token = pin2.get_pin_token(PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP["id"])
        cdh = hashlib.sha256(b"registration client data").digest()
        keepalives = []
        att = ctap.make_credential(
            cdh,
            RP,
            USER,
            ES256,
            options={"rk": True},
            pin_uv_param=pin2.protocol.authenticate(token, cdh),
            pin_uv_protocol=pin2.protocol.VERSION,
            on_keepalive=keepalives.append,
        )
        result = PackedAttestation().verify(att.att_stmt, att.auth_data, cdh)
        assert result.attestation_type == AttestationType.SELF
        cred = att.auth_data.credential_data
        step(
            f"makeCredential: fmt={att.fmt} attestation={result.attestation_type.name} verified, "
            f"flags={att.auth_data.flags:#04x} counter={att.auth_data.counter} "
            f"credential id={cred.credential_id.hex()[:16]}... keepalives={keepalives[:3]}...({len(keepalives)})"
        )
        public_key = CoseKey.parse(cred.public_key)

        # getAssertion, discoverable (no allow list), with a protocol-one token.
        pin1 = ClientPin(ctap, PinProtocolV1())
        token1 = pin1.get_pin_token(PIN)
        cdh = hashlib.sha256(b"login client data").digest()
        assertion = ctap.get_assertion(
            RP["id"],
            cdh,
            pin_uv_param=pin1.protocol.authenticate(token1, cdh),
            pin_uv_protocol=pin1.protocol.VERSION,
        )
        assertion.verify(cdh, public_key)
        assert assertion.user["id"] == USER["id"], assertion.user
        assert assertion.auth_data.counter > att.auth_data.counter
        step(
            f"getAssertion: signature verified with the credential key, user={assertion.user}, "
            f"flags={assertion.auth_data.flags:#04x} counter={assertion.auth_data.counter}"
        )

        # getAssertion with an allow list and no PIN: user present, not verified.
        cdh = hashlib.sha256(b"second login").digest()
        assertion = ctap.get_assertion(
            RP["id"], cdh, allow_list=[{"type": "public-key", "id": cred.credential_id}]
        )
        assertion.verify(cdh, public_key)
        step(f"getAssertion (allow list, no PIN): verified, flags={assertion.auth_data.flags:#04x}")

        # A wrong PIN costs a retry.
        try:
            ClientPin(ctap, PinProtocolV2()).get_pin_token("0000")
            raise SystemExit("a wrong PIN was accepted")
        except CtapError as e:
            step(f"wrong PIN: {e.code.name} ({e.code:#04x}); retries now {pin2.get_pin_retries()}")
            assert e.code == CtapError.ERR.PIN_INVALID
        assert pin2.get_pin_retries()[0] == 7
        pin2.get_pin_token(PIN)
        step(f"right PIN again: retries back to {pin2.get_pin_retries()[0]}")

        # Three wrong PINs in a row: blocked until the key is plugged again.
        codes = []
        for _ in range(3):
            try:
                ClientPin(ctap, PinProtocolV1()).get_pin_token("0000")
            except CtapError as e:
                codes.append(e.code.name)
        retries = pin2.get_pin_retries()
        step(f"three wrong PINs: {codes}; retries, power cycle needed: {retries}")
        assert codes[-1] == "PIN_AUTH_BLOCKED" and retries == (5, True), (codes, retries)
        dev.close()
    finally:
        stop_key(proc)

    # Plugged again (a new process on the same state file): the right PIN works.
    proc, path = start_key(binary, "--state", state_file, "--serial", "py-check-1")
    try:
        ctap = Ctap2(open_device(path))
        pin2 = ClientPin(ctap, PinProtocolV2())
        before = pin2.get_pin_retries()
        pin2.get_pin_token(PIN)
        step(f"replugged: retries {before}, right PIN accepted, retries now {pin2.get_pin_retries()}")
    finally:
        stop_key(proc)

    with open(state_file) as f:
        state = json.load(f)
    creds = state["credentials"]
    step(
        f"state file: pin_hash={state['pin_hash']} retries={state['pin_retries']} "
        f"sign_count={state['sign_count']} credentials={len(creds)} "
        f"user={bytes.fromhex(creds[0]['user']['id'])!r}"
    )
    assert state["pin_hash"] == hashlib.sha256(PIN.encode()).hexdigest()[:32]
    assert len(creds) == 1 and creds[0]["discoverable"]


def timeout_check(binary):
    proc, path = start_key(
        binary, "--serial", "py-check-2", "--touch", "never", "--touch-timeout-ms", "2000"
    )
    try:
        ctap = Ctap2(open_device(path))
        keepalives = []
        started = time.monotonic()
        try:
            ctap.make_credential(
                b"\0" * 32, RP, USER, ES256, on_keepalive=keepalives.append
            )
            raise SystemExit("a credential was made without a touch")
        except CtapError as e:
            assert e.code == CtapError.ERR.USER_ACTION_TIMEOUT, e
            step(
                f"no touch: {e.code.name} ({e.code:#04x}) after {time.monotonic() - started:.1f} s, "
                f"{len(keepalives)} keepalives (status {set(keepalives)})"
            )
    finally:
        stop_key(proc)


def unplug_check(binary):
    proc, path = start_key(binary, "--serial", "py-check-3", "--unplug-after-requests", "1")
    try:
        ctap = Ctap2(open_device(path))  # getInfo: request 1
        try:
            ctap.make_credential(b"\0" * 32, RP, USER, ES256)
            raise SystemExit("the key answered after it was pulled out")
        except Exception as e:  # noqa: BLE001 - whatever the transport raises
            step(f"pulled out mid-ceremony: makeCredential raised {type(e).__name__}: {e}")
        line = proc.stdout.readline().strip()
        assert line == "unplugged", line
        proc.wait(timeout=30)
        assert not os.path.exists(path), f"{path} still exists"
        step(f"the key said {line!r} and {path} is gone")
    finally:
        if proc.poll() is None:
            proc.kill()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_binary = os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "..", "target")),
        "debug",
        "tessera-virtual-key",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=default_binary)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="vk-check-")

    print("== python-fido2 against tessera-virtual-key")
    main_check(args.binary, workdir)
    print("== a touch that never comes")
    timeout_check(args.binary)
    print("== the key pulled out mid-ceremony")
    unplug_check(args.binary)
    print("all python-fido2 checks passed")


if __name__ == "__main__":
    main()
