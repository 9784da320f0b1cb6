"""Test setup: Keras 2 for TFT/TFMA, and shared fixture builders."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import textwrap  # noqa: E402

import pytest  # noqa: E402

from transforms.spec import DatasetSpec, parse_spec  # noqa: E402

TINY_SPEC = textwrap.dedent("""\
    name: tiny
    catalog:
      path: catalog
      id: item_id
      features:
        - {name: genre, multivalued: true, separator: "|"}
        - {name: year}
    logs:
      path: logs
      pattern: "span-{SPAN}/*.csv"
      query_item: seed
      item: item
      context_features: [device]
    split: {eval_percent: 10, key: user}
    on_bad_input: {malformed_row: reject, unknown_item: reject, duplicate_item: error}
    """)


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


def tiny_spec(root: str, **overrides: object) -> DatasetSpec:
    import yaml

    data = yaml.safe_load(TINY_SPEC)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return parse_spec(data, root)


@pytest.fixture
def tiny_root(tmp_path):
    """A hand-written tiny dataset: 4 catalog items, one log span."""
    root = str(tmp_path)
    write(os.path.join(root, "catalog", "items.csv"), """\
        item_id,genre,year,ignored
        a,x|y,1990,zzz
        b,y,1995,zzz
        c,,2000,zzz
        d,z,,zzz
        """)
    write(os.path.join(root, "logs", "span-1", "part.csv"), """\
        user,seed,item,device
        u1,a,b,mobile
        u1,b,c,mobile
        u2,a,b,desktop
        u3,c,a,mobile
        """)
    return root
