#!/usr/bin/env python3
"""Check that every quote in a seed file occurs verbatim in its source article.

Usage: python seeds/check_quotes.py [SEED_YAML] [ARTICLE_TXT]
Defaults: seeds/zaozhuang.yaml beside this script, and the article kept in the repository at
seeds/source/000_4f659c39924bd0b0.txt (override with env SEED_ARTICLE).

The article breaks lines mid-sentence, so ALL whitespace is removed from both the
quote and the article before the substring test. Checked:
  * every mapping, anywhere in the file, with a non-null `quote` key;
  * source `title`s (headlines are quoted verbatim);
  * excerpts cited between 「 and 」 inside notes and inside the reasons of `inferred`.
Also checks that external_ids are unique per section and that references
(park, chain, enterprise, project, source) name an existing external_id.
Prints each failure and exits 1 if there is any; exits 0 otherwise.
"""

import os
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_SEED = HERE / "zaozhuang.yaml"
DEFAULT_ARTICLE = Path(os.environ.get("SEED_ARTICLE", HERE / "source" / "000_4f659c39924bd0b0.txt"))
WS = re.compile(r"\s+")
NOTE_EXCERPT = re.compile(r"「([^「」]+)」")
REF_SECTIONS = {
    "park": "parks",
    "chain": "chains",
    "enterprise": "enterprises",
    "project": "projects",
    "source": "sources",
}


def squash(text: str) -> str:
    return WS.sub("", text)


def walk(node, path="$"):
    """Yield (path, mapping) for every mapping in the document."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def check(data, article: str) -> list[str]:
    haystack = squash(article)
    failures = []

    def need(path, field, text):
        if not isinstance(text, str) or not squash(text):
            failures.append(f"{path}.{field}: not a non-empty string: {text!r}")
        elif squash(text) not in haystack:
            failures.append(f"{path}.{field}: not found in article: {text}")

    for path, mapping in walk(data):
        if mapping.get("quote") is not None:
            need(path, "quote", mapping["quote"])
        note = mapping.get("note")
        if isinstance(note, str):
            for excerpt in NOTE_EXCERPT.findall(note):
                need(path, "note「」", excerpt)
        inferred = mapping.get("inferred")
        if isinstance(inferred, dict):
            for field, reason in inferred.items():
                for excerpt in NOTE_EXCERPT.findall(str(reason)):
                    need(path, f"inferred.{field}「」", excerpt)

    if not isinstance(data, dict):
        return [*failures, "$: top level is not a mapping"]

    for i, src in enumerate(data.get("sources") or []):
        if src.get("title") is not None:
            need(f"$.sources[{i}]", "title", src["title"])

    ids: dict[str, set] = {}
    for section, records in data.items():
        seen = ids.setdefault(section, set())
        for i, rec in enumerate(records or []):
            ext = rec.get("external_id") if isinstance(rec, dict) else None
            if not ext:
                failures.append(f"$.{section}[{i}]: missing external_id")
            elif ext in seen:
                failures.append(f"$.{section}[{i}]: duplicate external_id {ext}")
            else:
                seen.add(ext)
    for section, records in data.items():
        for i, rec in enumerate(records or []):
            if not isinstance(rec, dict):
                continue
            for field, target in REF_SECTIONS.items():
                ref = rec.get(field)
                if ref is not None and ref not in ids.get(target, set()):
                    failures.append(
                        f"$.{section}[{i}].{field}: unknown {target} external_id {ref!r}"
                    )
    return failures


def main(argv):
    seed = Path(argv[1]) if len(argv) > 1 else DEFAULT_SEED
    article_path = Path(argv[2]) if len(argv) > 2 else DEFAULT_ARTICLE
    if not article_path.is_file():
        print(f"FAIL the source article is missing: {article_path}")
        return 1
    data = yaml.safe_load(seed.read_text(encoding="utf-8"))
    article = article_path.read_text(encoding="utf-8")
    failures = check(data, article)
    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        print(f"{len(failures)} failure(s) in {seed}")
        return 1
    quotes = sum(1 for _, m in walk(data) if m.get("quote") is not None)
    print(f"OK: {quotes} quotes in {seed} found in {article_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
