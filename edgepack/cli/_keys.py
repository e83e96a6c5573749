"""``edgepack keys``: make key pairs and trust files."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from .._errors import KeyFileError, UsageError
from .._keys import PASSPHRASE_ENV, generate_key, load_public_key, load_signing_key, save_key_pair
from .._trust import Trust, load_trust
from . import add_command, emit


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make Ed25519 key pairs and trust files",
                          description="Make Ed25519 key pairs and trust files.",
                          epilog="Example:\n  edgepack keys new --out keys/ --name release",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys.set_defaults(func=lambda a: keys.print_help() or 0)

    new = add_command(ksub, "new", "make an Ed25519 key pair (private key mode 0600)",
                      "EDGEPACK_KEY_PASSPHRASE=s3cret edgepack keys new --out keys/ --name release --encrypt")
    new.add_argument("--out", required=True, type=Path, help="directory for NAME.key and NAME.pub.json")
    new.add_argument("--name", default="release", help="file name stem (default: release)")
    new.add_argument("--encrypt", action="store_true",
                     help=f"encrypt the private key with a passphrase from ${PASSPHRASE_ENV} or a prompt")
    new.set_defaults(func=_new)

    trust = add_command(ksub, "trust", "make a trust file listing public keys and a threshold",
                        "edgepack keys trust keys/a.pub.json keys/b.pub.json --threshold 2 --out trust.json")
    trust.add_argument("public_keys", nargs="+", type=Path, help="one or more NAME.pub.json files")
    trust.add_argument("--threshold", type=int, default=1, help="signatures a bundle needs (default 1)")
    trust.add_argument("--version", dest="trust_version", type=int, default=1,
                       help="trust file version; raise it by one to rotate (default 1)")
    trust.add_argument("--out", required=True, type=Path, help="where to write the trust file")
    trust.add_argument("--sign-with", action="append", type=Path, default=[], metavar="KEY",
                       help="sign the trust file with this private key (repeat; a rotation needs a threshold "
                            "of the old keys and of the new ones)")
    trust.set_defaults(func=_trust)


def _passphrase() -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    try:
        first = getpass.getpass("Passphrase for the new key: ")
        second = getpass.getpass("Repeat it: ")
    except (EOFError, OSError) as e:
        raise KeyFileError("no passphrase given", hint=f"set {PASSPHRASE_ENV} or run in a terminal") from e
    if first != second or not first:
        raise UsageError("the passphrases differ or are empty", hint="run the command again")
    return first.encode()


def _new(args: argparse.Namespace) -> int:
    key = generate_key()
    priv, pub = save_key_pair(key, args.out, args.name, _passphrase() if args.encrypt else None)
    emit(args, {"keyid": key.keyid, "private_key": str(priv), "public_key": str(pub), "encrypted": args.encrypt},
         f"key {key.keyid[:16]}…\n  private: {priv} (mode 0600{', encrypted' if args.encrypt else ''}; "
         f"never commit it)\n  public:  {pub}")
    return 0


def _trust(args: argparse.Namespace) -> int:
    keys = [load_public_key(p) for p in args.public_keys]
    trust = Trust.of(keys, threshold=args.threshold, version=args.trust_version)
    for key_path in args.sign_with:
        trust.sign(load_signing_key(key_path))
    if args.out.exists():
        old = load_trust(args.out)
        if trust.version <= old.version:
            raise UsageError(f"{args.out} is already version {old.version}",
                             hint=f"pass --version {old.version + 1} to rotate, or choose another --out")
        old.rotate_to(trust)
    trust.save(args.out)
    emit(args, {"trust_file": str(args.out), **trust.signed_dict()},
         f"wrote {args.out}: {len(keys)} key(s), threshold {trust.threshold}, version {trust.version}")
    return 0
