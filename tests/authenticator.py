"""A software WebAuthn authenticator for tests: ES256 keys made with `cryptography`,
attestation "none", and the JSON a browser's `PublicKeyCredential.toJSON()` sends. Each
part the server checks can be made wrong on purpose (origin, RP id, user verification,
the counter), to see each refusal."""

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, encode_cbor

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64(data: bytes) -> str:
    return bytes_to_base64url(data)


@dataclass
class Credential:
    """One credential the authenticator holds: its id, key, user handle and counter."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    user_handle: bytes
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        # COSE_Key: kty EC2 (2), alg ES256 (-7), crv P-256 (1), x, y.
        return encode_cbor(
            {
                1: 2,
                3: -7,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


@dataclass
class Authenticator:
    """Makes credentials for `rp_id` on pages of `origin`, as a browser would."""

    rp_id: str
    origin: str
    credentials: list[Credential] = field(default_factory=list)
    counting: bool = True  # False: an authenticator that keeps no counter (always 0)

    def create(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool = True,
        credential: Credential | None = None,
    ) -> dict[str, Any]:
        """The answer to navigator.credentials.create(options); the credential kept
        (or `credential` answered again, to register one twice)."""
        if credential is None:
            credential = Credential(
                credential_id=os.urandom(32),
                private_key=ec.generate_private_key(ec.SECP256R1()),
                user_handle=base64url_to_bytes(options["user"]["id"]),
            )
            self.credentials.append(credential)
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attested = (
            bytes(16)  # AAGUID: none
            + struct.pack(">H", len(credential.credential_id))
            + credential.credential_id
            + credential.cose_public_key()
        )
        auth_data = self._auth_data(rp_id, user_verified, credential.sign_count, AT) + attested
        attestation = encode_cbor({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64(credential.credential_id),
            "rawId": b64(credential.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(client_data),
                "attestationObject": b64(attestation),
                "transports": ["internal", "hybrid"],
            },
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        credential: Credential | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        user_verified: bool = True,
        sign_count: int | None = None,
    ) -> dict[str, Any]:
        """The answer to navigator.credentials.get(options) with `credential` (default:
        the newest), its counter moved on (or set to `sign_count`)."""
        credential = credential or self.credentials[-1]
        if sign_count is not None:
            credential.sign_count = sign_count
        elif self.counting:
            credential.sign_count += 1
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = self._auth_data(rp_id, user_verified, credential.sign_count, 0)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = credential.private_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64(credential.credential_id),
            "rawId": b64(credential.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64(client_data),
                "authenticatorData": b64(auth_data),
                "signature": b64(signature),
                "userHandle": b64(credential.user_handle),
            },
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
        }

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        data = {"type": kind, "challenge": challenge, "origin": origin or self.origin}
        return json.dumps({**data, "crossOrigin": False}).encode()

    def _auth_data(self, rp_id: str | None, user_verified: bool, count: int, extra: int) -> bytes:
        flags = UP | BE | BS | extra | (UV if user_verified else 0)
        rp_id_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        return rp_id_hash + bytes([flags]) + struct.pack(">I", count)
