"""``edgepack sign``, ``verify`` and ``inspect``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from .._archive import ArchiveLimits
from .._bundle import open_bundle, sign_bundle, verify_bundle
from .._keys import load_signing_key
from .._term import table
from .._trust import load_trust
from . import add_command, emit


def register(sub: argparse._SubParsersAction) -> None:
    s = add_command(sub, "sign", "add a signature to a bundle (re-checks every artifact hash first)",
                    "edgepack sign dist/digits-1.edgepack --key keys/release.key")
    s.add_argument("bundle", type=Path)
    s.add_argument("--key", required=True, type=Path, help="private key made by 'edgepack keys new'")
    s.add_argument("-o", "--out", type=Path, help="write the signed bundle here instead of in place")
    s.set_defaults(func=_sign)

    v = add_command(sub, "verify", "verify a bundle: signature threshold, artifact sizes and hashes, expiry",
                    "edgepack verify dist/digits-1.edgepack --trust trust.json")
    v.add_argument("bundle", type=Path)
    v.add_argument("--trust", required=True, type=Path, help="trust file made by 'edgepack keys trust'")
    v.add_argument("--max-size-mb", type=float, default=None, help="refuse archives larger than this")
    v.set_defaults(func=_verify)

    i = add_command(sub, "inspect", "show a bundle's manifest, artifacts and parity summary (does not verify)",
                    "edgepack inspect dist/digits-1.edgepack --json")
    i.add_argument("bundle", type=Path)
    i.set_defaults(func=_inspect)


def _sign(args: argparse.Namespace) -> int:
    key = load_signing_key(args.key)
    out = sign_bundle(args.bundle, key, out=args.out)
    emit(args, {"bundle": str(out), "keyid": key.keyid}, f"signed {out} with key {key.keyid[:16]}…")
    return 0


def _verify(args: argparse.Namespace) -> int:
    trust = load_trust(args.trust)
    limits = ArchiveLimits()
    if args.max_size_mb:
        size = int(args.max_size_mb * (1 << 20))
        limits = ArchiveLimits(max_archive_bytes=size, max_total_bytes=size)
    vb = verify_bundle(args.bundle, trust, limits=limits)
    m = vb.manifest
    result = {"bundle": str(vb.path), "ok": True, "name": m.name, "version": m.version,
              "signed_by": vb.signed_by, "threshold": trust.threshold, "expires_at": m.expires_at,
              "artifacts": [a.path for a in m.artifacts]}
    emit(args, result,
         f"OK {m.name} v{m.version}: {len(vb.signed_by)}/{trust.threshold} trusted signature(s), "
         f"{len(m.members())} member(s) match their sha256 and size, expires {m.expires_at}")
    return 0


def _fmt_parity(p: dict[str, Any]) -> str:
    if not p:
        return "-"
    bits = []
    if "passed" in p:
        bits.append("PASS" if p["passed"] else "FAIL")
    for key, label in (("max_abs", "max|Δ|"), ("cosine", "cos"), ("top1_agreement", "top1"),
                       ("accuracy_delta", "Δacc")):
        if isinstance(p.get(key), (int, float)):
            bits.append(f"{label}={p[key]:.4g}")
    return " ".join(bits) or "-"


def _inspect(args: argparse.Namespace) -> int:
    opened = open_bundle(args.bundle)
    m = opened.manifest
    expired = m.expires <= dt.datetime.now(dt.UTC)
    result = {"bundle": str(opened.path), "manifest": m.to_dict(),
              "signatures": [s.keyid for s in opened.signatures], "expired": expired, "verified": False}
    rows = [(a.path.removeprefix("artifacts/"), a.format, a.precision, f"{a.size / 1024:.1f} KiB",
             a.sha256[:12], _fmt_parity(a.parity)) for a in m.artifacts]
    io = m.io
    ins = ", ".join(f"{x.get('name')}{x.get('shape')}:{x.get('dtype')}" for x in io.get("inputs", []))
    outs = ", ".join(f"{x.get('name')}{x.get('shape')}:{x.get('dtype')}" for x in io.get("outputs", []))
    text = "\n".join([
        f"{m.name} v{m.version}   schema {m.schema}",
        f"created {m.created_at}   expires {m.expires_at}{'  (EXPIRED)' if expired else ''}",
        f"signatures: {len(opened.signatures)} ({', '.join(s.keyid[:12] for s in opened.signatures) or 'none'})",
        f"inputs:  {ins or '-'}",
        f"outputs: {outs or '-'}",
        "",
        table(["artifact", "format", "precision", "size", "sha256", "parity"], rows),
        "",
        "not verified: run 'edgepack verify BUNDLE --trust TRUST' before trusting any of this",
    ])
    emit(args, result, text)
    return 0
