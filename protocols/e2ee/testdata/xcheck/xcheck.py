#!/usr/bin/python3
"""Cross-check peer for kinmesh's Double Ratchet core (protocols/e2ee).

An independent implementation -- Debian's python3-doubleratchet 1.0.3 (MIT),
with python3-nacl (libsodium) for XChaCha20-Poly1305 and python3-cryptography
(OpenSSL) for X25519 and HKDF -- configured with kinmesh's primitives:

  root KDF   HKDF-SHA-256, salt = root key, IKM = DH output,
             info = "kinmesh/e2ee/ratchet-root/v1"
  chain KDF  next chain key = HMAC-SHA-256(ck, 0x02),
             message key    = HMAC-SHA-256(ck, 0x01)
  AEAD       XChaCha20-Poly1305 keyed by the message key, 24-byte random
             nonce prepended to the ciphertext
  AD         caller's AD || ratchet key (32) || PN (4, big-endian) ||
             N (4, big-endian)

The Go test (xcheck_test.go) runs this script with Debian's /usr/bin/python3
and talks to it in JSON lines on stdin/stdout, one request and one reply per
line; bytes are hex. Requests ("op"):

  alice    {session, sk, bob_pub, pt, ad}      -> {dh, pn, n, ct}
  bob      {session, sk, bob_priv, dh, pn, n, ct, ad} -> {pt}
  encrypt  {session, pt, ad}                   -> {dh, pn, n, ct}
  decrypt  {session, dh, pn, n, ct, ad}        -> {pt}
  pqxdh    {ik_a, ek_a, ik_b, spk_b, opk_b?, ss} -> {sk}
           (Alice's side of PQXDH's KDF: private ik_a, ek_a; public
           ik_b, spk_b, opk_b; the ML-KEM shared secret ss is given, as
           Debian's Python has no ML-KEM)
  hkdf     {ikm, salt, info, length}           -> {okm}

Errors reply {"error": "<exception class>"}. No header encryption: the
library has none; the Go side drives its ratchet core alone for this check.
"""

import asyncio
import json
import os
import sys

import doubleratchet
import nacl.bindings as sodium
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet.recommended import HashFunction, kdf_hkdf, kdf_separate_hmacs
from doubleratchet.recommended import diffie_hellman_ratchet_curve25519 as curve25519

ROOT_INFO = b"kinmesh/e2ee/ratchet-root/v1"
PQXDH_INFO = b"kinmesh_CURVE25519_SHA-256_ML-KEM-768"
CHAIN_CONSTANT = b"\x02\x01"  # first HMAC is the next chain key, second the message key
MAX_SKIP = 1000
MAX_SKIPPED = 5000


class RootKDF(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function():
        return HashFunction.SHA_256

    @staticmethod
    def _get_info():
        return ROOT_INFO


class ChainKDF(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function():
        return HashFunction.SHA_256


class XChaCha20Poly1305(doubleratchet.AEAD):
    @staticmethod
    async def encrypt(plaintext, key, associated_data):
        nonce = os.urandom(24)
        return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, associated_data, nonce, key)

    @staticmethod
    async def decrypt(ciphertext, key, associated_data):
        if len(ciphertext) < 24 + 16:
            raise doubleratchet.DecryptionFailedException("short ciphertext")
        try:
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                ciphertext[24:], associated_data, ciphertext[:24], key)
        except Exception as e:  # nacl.exceptions.CryptoError
            raise doubleratchet.AuthenticationFailedException("authentication failed") from e


class DoubleRatchet(doubleratchet.DoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data, header):
        return (associated_data + header.ratchet_pub
                + header.previous_sending_chain_length.to_bytes(4, "big")
                + header.sending_chain_length.to_bytes(4, "big"))


CONFIG = dict(
    diffie_hellman_ratchet_class=curve25519.DiffieHellmanRatchet,
    root_chain_kdf=RootKDF,
    message_chain_kdf=ChainKDF,
    message_chain_constant=CHAIN_CONSTANT,
    dos_protection_threshold=MAX_SKIP,
    max_num_skipped_message_keys=MAX_SKIPPED,
    aead=XChaCha20Poly1305,
)

sessions = {}


def b(req, key):
    return bytes.fromhex(req[key])


def header_of(req):
    return doubleratchet.Header(ratchet_pub=b(req, "dh"),
                                previous_sending_chain_length=req["pn"],
                                sending_chain_length=req["n"])


def message_reply(msg):
    h = msg.header
    return {"dh": h.ratchet_pub.hex(), "pn": h.previous_sending_chain_length,
            "n": h.sending_chain_length, "ct": msg.ciphertext.hex()}


def dh(priv, pub):
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))


def hkdf(ikm, salt, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


async def handle(req):
    op = req["op"]
    if op == "alice":
        dr, msg = await DoubleRatchet.encrypt_initial_message(
            shared_secret=b(req, "sk"), recipient_ratchet_pub=b(req, "bob_pub"),
            message=b(req, "pt"), associated_data=b(req, "ad"), **CONFIG)
        sessions[req["session"]] = dr
        return message_reply(msg)
    if op == "bob":
        msg = doubleratchet.EncryptedMessage(header=header_of(req), ciphertext=b(req, "ct"))
        dr, pt = await DoubleRatchet.decrypt_initial_message(
            shared_secret=b(req, "sk"), own_ratchet_priv=b(req, "bob_priv"),
            message=msg, associated_data=b(req, "ad"), **CONFIG)
        sessions[req["session"]] = dr
        return {"pt": pt.hex()}
    if op == "encrypt":
        msg = await sessions[req["session"]].encrypt_message(b(req, "pt"), b(req, "ad"))
        return message_reply(msg)
    if op == "decrypt":
        msg = doubleratchet.EncryptedMessage(header=header_of(req), ciphertext=b(req, "ct"))
        pt = await sessions[req["session"]].decrypt_message(msg, b(req, "ad"))
        return {"pt": pt.hex()}
    if op == "pqxdh":
        ik_a, ek_a = b(req, "ik_a"), b(req, "ek_a")
        km = dh(ik_a, b(req, "spk_b")) + dh(ek_a, b(req, "ik_b")) + dh(ek_a, b(req, "spk_b"))
        if req.get("opk_b"):
            km += dh(ek_a, b(req, "opk_b"))
        km += b(req, "ss")
        return {"sk": hkdf(b"\xff" * 32 + km, b"\x00" * 32, PQXDH_INFO, 32).hex()}
    if op == "hkdf":
        return {"okm": hkdf(b(req, "ikm"), b(req, "salt"), b(req, "info"), req["length"]).hex()}
    raise ValueError("unknown op " + op)


def main():
    loop = asyncio.new_event_loop()
    print(json.dumps({"ready": True, "doubleratchet": doubleratchet.__version__["short"]}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = loop.run_until_complete(handle(json.loads(line)))
        except Exception as e:  # reported to the Go side, which decides
            reply = {"error": type(e).__name__, "detail": str(e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
