"""Fetching the TinyHelen release from its public GitHub repository, for users without a local copy.

The repository EmpathYang/TinyHelen keeps the data under data/ (data/leaner/10M/train/book0000.jsonl ...);
a local copy mirrors everything below data/, so `dest` here is a folder usable as --data_root.

Downloads are meant to survive a flaky network: each file streams into FILE.part; a dropped connection
resumes from the bytes already there with an HTTP Range request (a server that ignores Range and sends
the whole file again is handled by starting over); connection errors, 5xx and 429 are retried with
exponential backoff; only a verified file is renamed into place, atomically.

What is verified: every file's byte count against Content-Length (and Content-Range when resuming), and,
for the files in MANIFEST that have a hash, size and sha256 against values computed from the copy in
../shared/data/tinyhelen. NOT verified: the three files over 4 MiB that the local copy lacks (no known
hash: only their length is checked), and any file the authors change upstream after this manifest was
written (the sha256 check then fails loudly; update MANIFEST).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Iterable

import requests
from tqdm import tqdm

from data.corpus import _FILE_NAME, GENRES, SPLITS
from tinyhelen.atomic import fsync_dir

BASE_URL = "https://raw.githubusercontent.com/EmpathYang/TinyHelen/main/data/"
# Path below data/, size in bytes, sha256 — the 10M scale, computed from ../shared/data/tinyhelen.
# "-" marks the files of 4 MiB or more that the local copy lacks: their size and hash are unknown here.
_MANIFEST_TEXT = """
leaner/10M/train/book0000.jsonl 1485304 3dce24e4a3867153918d0dd5d3438f9fab2cf20e0f0f568cce81d2006baa8f91
leaner/10M/train/code0000.jsonl - -
leaner/10M/train/conversation0000.jsonl 798942 ba31cfd9e7fc4bd170d4e7733a1a9742667c95447ed9568cfe445bd0fd5486de
leaner/10M/train/math0000.jsonl 1111571 7e185e5a801b1b52332873ab0538a69a3f9edc7140303cb40342d3ed2333e0c7
leaner/10M/train/textbook0000.jsonl 3279564 be485d1fe3a577c7401978826ea54adf4e4281ed6eb0a63bd7d78ad8b9af7fea
leaner/10M/train/web0000.jsonl - -
leaner/10M/train/wiki0000.jsonl 1077038 9a494ff8a3f0cb18ff3a699e09bfedbe0d6bfd44feea4a6c91872c30320448fb
leaner/10M/validation/book0000.jsonl 238867 9428e845aeb194b52b2cf5f343c6aebe8865485961487b51dc1772586251b4e2
leaner/10M/validation/code0000.jsonl 302292 5aabd3c661c8681f8e72302d6f8ee15508cb50e63bf38d52b747d8a6258b5579
leaner/10M/validation/conversation0000.jsonl 43229 bc1195b4b004cfb40d3c377dea2cecf1bac69b493a0012631222f41356c23225
leaner/10M/validation/math0000.jsonl 61337 f9c8df0b8fd4c406ca6e4f395c039b59f3eb426257e14a6f4aaf6547b5f51e2b
leaner/10M/validation/textbook0000.jsonl 167425 74fcf127ef3e29bc746635aac93f8512b92d49e7a3ed0eacf5c6c1178c62e697
leaner/10M/validation/web0000.jsonl 995782 9fb94c94a8b0e7df00bb71a9804325d49f6118b531dde32ef60d2eacf8cb3355
leaner/10M/validation/wiki0000.jsonl 50298 c49ab6179d518be25fc842b916bca4cfe0de0109a27570b30d28e3bdae715b50
leaner/10M/test/book0000.jsonl 174578 48b30038d5e7f9d8e149c0f001c43a545105e40fc64dd28c601ed012567e1fbf
leaner/10M/test/code0000.jsonl 280323 ce84bfa3789dc040e0cc5ca7ac6a59bc7edb97098646d2d480b84372e3013778
leaner/10M/test/conversation0000.jsonl 63917 3b9b5ce4f2684d4b45cf2684668901fc21c689951bdbb7b2766100086f281cc7
leaner/10M/test/math0000.jsonl 65596 173be0e4adb7cc32a7e87a7e2c9de73306cf15d0feb571d997c1756738df73db
leaner/10M/test/textbook0000.jsonl 167828 40e011f924bf592505136115725e825f357b279b36cb3e4e51bf3b9d7976c1d9
leaner/10M/test/web0000.jsonl 975992 c23f7e3675153356a5b789912a1bff8bae65a5d2bc006c90e94f870647bdd7b0
leaner/10M/test/wiki0000.jsonl 56079 5450ef31cb1a5f59d8986d4ea0e925f2198e9a5be4211ad713f972f123129401
ori/10M/train/book0000.jsonl.zst 796857 065e8ab6bbd43c1925d14c39d04fb2c873f4dcb639d3dcbbcfd8b6e16d412ec6
ori/10M/train/code0000.jsonl.zst 1629632 e86301ff611d9a6620b17e3d74c261544b897ea158a40915ad7fe4423707dbe5
ori/10M/train/conversation0000.json.zst 143549 f8a4832a8350df6a213077f2c96f07748268b91a7c3d98b03c63a1f74e9a9eac
ori/10M/train/math0000.jsonl 1111571 7e185e5a801b1b52332873ab0538a69a3f9edc7140303cb40342d3ed2333e0c7
ori/10M/train/textbook0000.jsonl.zst 1090075 82d8d73855e85c6e50bb91b6cc3f933a892af95a87417c389b904f98143cd495
ori/10M/train/web0000.jsonl.zst - -
ori/10M/train/wiki0000.jsonl.zst 420757 be2dcbae8289c8b7e960e71c37397ac835894ac22ebfedc55785eb297c11e86c
ori/10M/validation/book0001.jsonl.zst 126878 74e241fc1e18415808637adbc746540b8fc0485f5a82a06b342e861d12e82c4f
ori/10M/validation/code0001.jsonl.zst 90787 a67a27987d1f84f91a23cbc56d0405d7fd86160aa7f583dfdc483451320e37fe
ori/10M/validation/conversation0001.json.zst 16901 b58fa53144f631da98ba5a134a0ddb36415a79e6b071975ba928076cf2f4a451
ori/10M/validation/math0000.jsonl 61337 f9c8df0b8fd4c406ca6e4f395c039b59f3eb426257e14a6f4aaf6547b5f51e2b
ori/10M/validation/textbook0001.jsonl.zst 58512 1f8a4acdbe41f4d1a9c9d0a56970b8920485cb307ac00f19e23e2dda65b4609a
ori/10M/validation/web0001.jsonl.zst 487311 2a6cac962122e210d08d5f2ca1cb113ceeaa1625bab370d649d62cfc3ac737c9
ori/10M/validation/wiki0001.jsonl.zst 23563 64e1a68a6c980af2237bd4491cff2c6f5b3947897dc359f9a3008f5ebe7b24b3
ori/10M/test/book0002.jsonl.zst 119819 674763bae8161b3da5d0c786b10204f2dcfe19230a00de0079a2fc466255c358
ori/10M/test/code0002.jsonl.zst 87105 831ff8787fac59828781cbadcc4f1c5b22de4aceffac3565a8ab8f1c36cf9db0
ori/10M/test/conversation0002.json.zst 27841 06b74c7ad9b5e43c5b8767316748a91878cd38717777bb4c663325fccd28d70e
ori/10M/test/math0000.jsonl 65596 173be0e4adb7cc32a7e87a7e2c9de73306cf15d0feb571d997c1756738df73db
ori/10M/test/textbook0002.jsonl.zst 60141 59d210ed76febe56a15892b4a25456f8bfe2a54390c8577f1d6b901976de916c
ori/10M/test/web0002.jsonl.zst 515628 eb6fafe7366fc4c68ea17bc931dd98699661a53dfd8b9e16542ac4a507b0b5ab
ori/10M/test/wiki0002.jsonl.zst 24158 0ccce2f248bbcdf0526a8a5beca137b7c43674509e1873d20892cb1da9a5c202
"""


def _parse_manifest(text: str) -> dict[str, tuple[int | None, str | None]]:
    rows = (line.split() for line in text.strip().splitlines())
    return {path: (None if size == "-" else int(size), None if sha == "-" else sha)
            for path, size, sha in rows}


MANIFEST = _parse_manifest(_MANIFEST_TEXT)


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification; the message names the URL and the fix."""


class _Retry(Exception):
    """A failure worth retrying (dropped connection, 5xx, 429, short body)."""

    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


def release_files(corpus: str, genres: Iterable[str] = GENRES, splits: Iterable[str] = SPLITS,
                  scale: str = "10M", manifest: dict | None = None) -> list[str]:
    """The manifest paths (below data/) holding the given corpus, scale, genres and splits."""
    manifest = MANIFEST if manifest is None else manifest
    genres, splits = set(genres), set(splits)
    chosen = []
    for rel in sorted(manifest):
        c, s, split, name = rel.split("/")
        m = _FILE_NAME.match(name)
        if c == corpus and s == scale and split in splits and m and m["genre"] in genres:
            chosen.append(rel)
    if not chosen:
        raise DownloadError(f"the download manifest has no {corpus}/{scale} files for genres "
                            f"{sorted(genres)} and splits {sorted(splits)}; only the 10M scale is listed. "
                            f"Download other files by hand from {BASE_URL} into the same layout and "
                            f"pass --data_root")
    return chosen


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_complete(path: Path, size: int | None, sha256: str | None) -> bool:
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return sha256 is None or sha256_of(path) == sha256


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _stream_once(session: requests.Session, url: str, part: Path, timeout: float,
                 progress: bool) -> int | None:
    """One GET, resuming from part's current size. Returns the expected total size (None if unknown).
    Raises _Retry for transient failures and DownloadError for permanent ones."""
    have = part.stat().st_size if part.exists() else 0
    # identity: a gzip-encoded response would make Content-Length and Range refer to compressed bytes.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retry(f"HTTP {r.status_code}", _retry_after(r))
        if r.status_code == 416:  # our part is not a prefix the server recognises: start over
            part.unlink(missing_ok=True)
            raise _Retry("HTTP 416 on resume", 0.0)
        if r.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {r.status_code}; check the URL or the release layout")
        start = 0
        if have and r.status_code == 206:
            start = int(r.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != have:  # a range other than the one asked for: do not splice it in
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start}, not {have}", 0.0)
        length = r.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        mode = "ab" if start else "wb"  # 200 after a Range request: the server sent the whole file
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                         desc=part.name.removesuffix(".part"), disable=not progress,
                                         leave=False) as bar:
            for chunk in r.iter_content(chunk_size=1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got != total:
        raise _Retry(f"connection closed after {got} of {total} bytes")
    return total


def download_file(url: str, dest: str | Path, size: int | None = None, sha256: str | None = None, *,
                  session: requests.Session | None = None, retries: int = 6, backoff: float = 1.0,
                  timeout: float = 60.0, progress: bool = True) -> Path:
    """Download url to dest (skipped when dest is already complete) with resume, retries and checks."""
    dest = Path(dest)
    if _is_complete(dest, size, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = session or requests.Session()
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _stream_once(session, url, part, timeout, progress)
            break
        except (_Retry, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as e:
            # A failure after real progress is a new problem, not the same one again.
            failures = 1 if part.exists() and part.stat().st_size > before else failures + 1
            if failures > retries:
                raise DownloadError(f"{url}: gave up after {retries} retries ({e}); the partial file "
                                    f"{part} is kept, run again to resume") from None
            wait = getattr(e, "wait", None)
            time.sleep(min(wait if wait is not None else backoff * 2 ** (failures - 1), 60.0))
    _verify(part, url, size, sha256)
    # The .part file is the download's own resumable temp file, so it is renamed here rather than
    # written through atomic_file; synced first, and the folder after, as tinyhelen/atomic.py does.
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    fsync_dir(dest.parent)
    return dest


def _verify(part: Path, url: str, size: int | None, sha256: str | None) -> None:
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"{url}: got {got} bytes, the manifest expects {size}; run again to refetch")
    if sha256 is not None and sha256_of(part) != sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 differs from the manifest (corrupt download, or the file "
                            f"changed upstream); run again, and if it persists update MANIFEST")


def download_release(dest: str | Path, corpus: str = "leaner", genres: Iterable[str] = GENRES,
                     splits: Iterable[str] = SPLITS, scale: str = "10M", base_url: str = BASE_URL,
                     manifest: dict | None = None, progress: bool = True,
                     session: requests.Session | None = None, **kwargs) -> Path:
    """Fetch the files of the given corpus/genres/splits into dest (laid out like data/ upstream);
    files already complete in dest are kept. Returns dest, usable as --data_root."""
    manifest = MANIFEST if manifest is None else manifest
    dest = Path(dest)
    session = session or requests.Session()
    for rel in tqdm(release_files(corpus, genres, splits, scale, manifest), desc="TinyHelen files",
                    unit="file", disable=not progress):
        size, sha256 = manifest[rel]
        download_file(base_url.rstrip("/") + "/" + rel, dest / rel, size, sha256, session=session,
                      progress=progress, **kwargs)
    return dest
