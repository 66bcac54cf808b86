#!/usr/bin/env python3
"""A second-language client of the vault: tokenize, read metadata, detokenize, over mutual TLS.

The gRPC stubs are generated from the repository's proto/ at start (grpcio-tools), into a
temporary directory, so they always match the server they talk to.

    pip install -r examples/python/requirements.txt
    python3 examples/python/vault_client.py --dev-dir .vault-dev --addr 127.0.0.1:50051

Against `vaultd dev`: the gateway identity tokenizes and reads metadata, the payments identity
detokenizes (the dev policy allows nothing else). Prints the token and metadata, and of the
card only its last four digits: a client should not print or log card numbers either.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
TEST_CARD = "4242424242424242"


def generate_stubs(out: pathlib.Path):
    """Compiles proto/vault/v1/*.proto into `out` and imports the token service's modules."""
    includes = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{includes}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
    ] + [str(p) for p in sorted((PROTO / "vault" / "v1").glob("*.proto"))]
    if protoc.main(args) != 0:
        sys.exit("vault_client: protoc failed on proto/vault/v1")
    sys.path.insert(0, str(out))
    return (
        importlib.import_module("vault.v1.vault_pb2"),
        importlib.import_module("vault.v1.vault_pb2_grpc"),
    )


def channel(addr: str, pki: pathlib.Path, identity: str) -> grpc.Channel:
    """A mutual-TLS channel to `addr` as the dev identity `identity`."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{identity}.key").read_bytes(),
        certificate_chain=(pki / f"{identity}.pem").read_bytes(),
    )
    return grpc.secure_channel(addr, credentials)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="the vault's gRPC address")
    parser.add_argument("--dev-dir", default=".vault-dev", help="the vaultd dev data directory")
    parser.add_argument("--merchant", default="merchant-1")
    args = parser.parse_args()
    pki = pathlib.Path(args.dev_dir) / "pki"

    with tempfile.TemporaryDirectory(prefix="vault-stubs-") as out:
        pb, rpc = generate_stubs(pathlib.Path(out))
        with channel(args.addr, pki, "gateway") as gateway, channel(
            args.addr, pki, "payments"
        ) as payments:
            tokens = rpc.TokenServiceStub(gateway)
            try:
                done = tokens.Tokenize(
                    pb.TokenizeRequest(
                        merchant_id=args.merchant, pan=TEST_CARD, exp_month=12, exp_year=2030
                    ),
                    timeout=10,
                )
            except grpc.RpcError as error:
                print(f"tokenize: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            print(f"token: {done.token} (existing: {done.existing})")

            metadata = tokens.GetTokenMetadata(
                pb.GetTokenMetadataRequest(merchant_id=args.merchant, token=done.token),
                timeout=10,
            ).metadata
            print(
                f"metadata: brand {metadata.brand}, bin {metadata.bin}, last4 {metadata.last4}, "
                f"expiry {metadata.expiry.month:02}/{metadata.expiry.year}"
            )

            detokenized = rpc.TokenServiceStub(payments).Detokenize(
                pb.DetokenizeRequest(
                    merchant_id=args.merchant, token=done.token, reason="python example"
                ),
                timeout=10,
            )
            if detokenized.pan != TEST_CARD:
                print("detokenize: a different card came back", file=sys.stderr)
                return 1
            print(f"detokenize: the card ending {detokenized.pan[-4:]} came back")

            # The gateway may not detokenize: the policy refuses it.
            try:
                tokens.Detokenize(
                    pb.DetokenizeRequest(merchant_id=args.merchant, token=done.token, reason="x"),
                    timeout=10,
                )
                print("detokenize as the gateway: allowed, but the dev policy refuses it")
                return 1
            except grpc.RpcError as error:
                print(f"detokenize as the gateway: {error.code().name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
