"""MovieLens-1M adapter on hand-written .dat fixtures (no download)."""

import csv
import os

import pytest

from pipeline.datasets import movielens
from transforms.spec import load_spec


def test_movie_row_tokens_genres_and_year_bucket():
    row = movielens.movie_row(["11", "American President, The (1995)", "Comedy|Drama|Romance"])
    assert row == {"movie_id": "11", "title": "american president the",
                   "genres": "Comedy|Drama|Romance", "year": "1995-1999"}
    assert movielens.movie_row(["7", "Sabrina (1954)", "Comedy"])["year"] == "1950-1954"
    assert movielens.movie_row(["8", "No Year", "Drama"])["year"] == ""


def test_pairs_follow_time_order_and_invent_none_inside_a_second():
    ratings = [
        ("2", "10", 5, 300), ("1", "30", 4, 200), ("1", "10", 5, 100),
        ("1", "20", 3, 150),                     # below 4: not a positive
        ("1", "50", 4, 200),                     # same second as 30: no order between them
        ("1", "60", 4, 250),                     # seed: 30 or 50, never by id
        ("2", "40", 4, 100), ("3", "10", 5, 1),  # user 3 has one positive: no pair
    ]
    got = [(p["user_id"], p["seed_movie_id"], p["movie_id"], p["timestamp"])
           for p in movielens.pairs(ratings)]
    assert got[:2] == [("1", "10", "30", "200"), ("1", "10", "50", "200")]
    assert got[2][0] == "1" and got[2][1] in ("30", "50") and got[2][2:] == ("60", "250")
    assert got[3:] == [("2", "40", "10", "300")]
    assert not any({s, m} == {"30", "50"} for _, s, m, _ in got)    # no pair inside a burst


def test_burst_seed_is_not_chosen_by_id():
    # 4,000 users: a burst {1, 2} at t=10, then movie 3 at t=20. The old rule
    # (ties by id) always made 2 the seed of 3; the hash picks each half the time.
    ratings = [(str(u), m, 5, t) for u in range(4000) for m, t in (("1", 10), ("2", 10),
                                                                  ("3", 20))]
    seeds = [p["seed_movie_id"] for p in movielens.pairs(ratings) if p["movie_id"] == "3"]
    assert len(seeds) == 4000
    share = seeds.count("1") / len(seeds)
    assert abs(share - 0.5) < 5 * (0.25 / 4000) ** 0.5
    assert seeds == [p["seed_movie_id"] for p in movielens.pairs(ratings)
                     if p["movie_id"] == "3"]                          # stable


def test_convert_writes_a_valid_dataset(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's\n2::Amélie (2001)::Comedy\n".encode("latin-1"))
    (raw / "ratings.dat").write_text("1::1::5::10\n1::2::4::20\n2::2::2::5\n")
    counts = movielens.convert(str(raw), str(tmp_path / "out"))
    assert counts == {"movies": 2, "ratings": 3, "pairs": 1}
    spec = load_spec(str(tmp_path / "out" / "dataset.yaml"))
    with open(os.path.join(spec.catalog.base, "movies.csv"), encoding="utf-8") as f:
        movies = list(csv.DictReader(f))
    assert movies[1] == {"movie_id": "2", "title": "amélie", "genres": "Comedy",
                         "year": "2000-2004"}
    pairs = os.path.join(spec.logs.base, "span-1", "pairs.csv")
    with open(pairs, encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == [
            {"user_id": "1", "seed_movie_id": "1", "movie_id": "2", "timestamp": "20"}]
    # Converting again leaves identical files untouched (ExampleGen's cache key).
    before = os.stat(pairs).st_mtime_ns
    os.utime(pairs, ns=(before - 10**9, before - 10**9))
    movielens.convert(str(raw), str(tmp_path / "out"))
    assert os.stat(pairs).st_mtime_ns == before - 10**9


def test_checksum_mismatch_is_reported(tmp_path):
    for name in movielens.SHA256:
        (tmp_path / name).write_text("not the real file")
    with pytest.raises(movielens.FetchError, match="SHA-256"):
        movielens._verify(str(tmp_path))
