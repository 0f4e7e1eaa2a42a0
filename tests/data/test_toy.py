"""The toy corpus: deterministic, disjoint, and the German really has the structure it claims.

The grammar checks below use their own small declension tables (not toy.py's), so a
wrong ending or article in the generator fails them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transformer_cli.data import toy

REPO = Path(__file__).resolve().parents[2]

# Which determiners may stand before a noun of each gender/number (nominative or
# accusative; no dative in the grammar). None = no article (bare plural).
ALLOWED_DETERMINERS = {
    ("m", False): {"der", "den", "ein", "einen", "mein", "meinen", "dieser", "diesen"},
    ("f", False): {"die", "eine", "meine", "diese"},
    ("n", False): {"das", "ein", "mein", "dieses"},
    ("m", True): {"die", "meine", "diese", None},
    ("f", True): {"die", "meine", "diese", None},
    ("n", True): {"die", "meine", "diese", None},
}
DETERMINERS = set().union(*ALLOWED_DETERMINERS.values()) - {None}
# The adjective ending after each determiner, for a given gender/number.
ADJECTIVE_ENDING = {
    ("der", "m", False): "e",
    ("den", "m", False): "en",
    ("die", "f", False): "e",
    ("das", "n", False): "e",
    ("ein", "m", False): "er",
    ("einen", "m", False): "en",
    ("ein", "n", False): "es",
    ("eine", "f", False): "e",
    ("mein", "m", False): "er",
    ("meinen", "m", False): "en",
    ("mein", "n", False): "es",
    ("meine", "f", False): "e",
    ("dieser", "m", False): "e",
    ("diesen", "m", False): "en",
    ("diese", "f", False): "e",
    ("dieses", "n", False): "e",
}
for _det in ("die", "meine", "diese"):
    for _g in "mfn":
        ADJECTIVE_ENDING[(_det, _g, True)] = "en"
        ADJECTIVE_ENDING[(None, _g, True)] = "e"


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return toy.generate(4000, seed=11)


def words(sentence: str) -> list[str]:
    return re.findall(r"[^\s,.?]+", sentence)


def german_nouns() -> dict[str, tuple[str, bool]]:
    """Unambiguous German noun forms -> (gender, plural); Mädchen-type forms are skipped."""
    forms = {}
    for n in toy.NOUNS:
        if n.de != n.de_pl:
            forms[n.de] = (n.gender, False)
            forms[n.de_pl] = (n.gender, True)
    return forms


def adjective(word: str) -> tuple[str, str] | None:
    """(stem, ending) if `word` is a declined toy adjective."""
    for _, stem, _ in toy.ADJECTIVES:
        base = stem[:-1] if stem.endswith("e") else stem  # müde -> müd + e/en/er/es
        rest = word.lower()[len(base) :]
        if word.lower().startswith(base) and rest in ("e", "en", "er", "es"):
            return stem, rest
    return None


def test_same_seed_gives_identical_bytes(tmp_path):
    toy.write_corpus(tmp_path / "a", sizes=(300, 40, 40), seed=5)
    toy.write_corpus(tmp_path / "b", sizes=(300, 40, 40), seed=5)
    toy.write_corpus(tmp_path / "c", sizes=(300, 40, 40), seed=6)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [f"{s}.{lang}" for s in ("test", "train", "valid") for lang in ("de", "en")]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/train.en").read_bytes() != (tmp_path / "c/train.en").read_bytes()


def test_splits_are_disjoint_aligned_and_sized(tmp_path):
    toy.write_corpus(tmp_path, sizes=(500, 60, 70), seed=2)
    seen: set[str] = set()
    for name, size in (("train", 500), ("valid", 60), ("test", 70)):
        en = (tmp_path / f"{name}.en").read_text("utf-8").splitlines()
        de = (tmp_path / f"{name}.de").read_text("utf-8").splitlines()
        assert len(en) == len(de) == size
        assert not seen & set(en), f"{name} repeats a sentence of an earlier split"
        seen |= set(en)
    assert len(seen) == 630


def test_shipped_corpus_is_what_the_generator_writes(tmp_path):
    shipped = REPO / "data/toy"
    if not (shipped / "train.en").exists():
        pytest.skip("data/toy is not present")
    toy.main([str(tmp_path)])
    for path in sorted(shipped.iterdir()):
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), path.name


def test_lengths_and_vocabulary_stay_small(pairs):
    lengths = [len(en.split()) for en, _ in pairs]
    assert 4 <= min(lengths) <= max(lengths) <= 20
    vocabulary = {w for en, de in pairs for w in words(en) + words(de)}
    assert len(vocabulary) < 1500


def test_articles_and_adjectives_agree_with_the_noun(pairs):
    nouns = german_nouns()
    checked_det = checked_adj = 0
    for _, de in pairs:
        tokens = words(de)
        for i, token in enumerate(tokens):
            if token not in nouns:
                continue
            gender, plural = nouns[token]
            j = i - 1
            adj = adjective(tokens[j]) if j >= 0 else None
            if adj:
                j -= 1
            det = tokens[j].lower() if j >= 0 and tokens[j].lower() in DETERMINERS else None
            assert det in ALLOWED_DETERMINERS[(gender, plural)], f"{det} {token}: {de}"
            checked_det += 1
            if adj:
                expected = ADJECTIVE_ENDING[(det, gender, plural)]
                assert adj[1] == expected, f"{tokens[i - 1]} after {det} before {token}: {de}"
                checked_adj += 1
    assert checked_det > 3000
    assert checked_adj > 1000


def test_nouns_and_their_number_carry_over(pairs):
    english = {}
    for n in toy.NOUNS:
        english[n.en] = (n.de, False)
        english[n.en_pl] = (n.de, True)
    german = {}
    for n in toy.NOUNS:
        german[n.de_pl] = (n.de, True if n.de != n.de_pl else None)
        german[n.de] = (n.de, False if n.de != n.de_pl else None)
    for en, de in pairs:
        src = sorted(english[w.lower()] for w in words(en) if w.lower() in english)
        tgt = sorted(german[w] for w in words(de) if w in german)
        assert [lemma for lemma, _ in src] == [lemma for lemma, _ in tgt], (en, de)
        for (_, a), (_, b) in zip(src, tgt, strict=True):
            assert b is None or a == b, (en, de)


def finite_verbs() -> set[str]:
    verbs = toy.TRANSITIVE + toy.INTRANSITIVE + toy.SAYING
    return {v.de for v in verbs} | {v.de_pl for v in verbs}


def test_verb_second_after_a_fronted_adverb(pairs):
    verbs = finite_verbs()
    checked = 0
    for en, de in pairs:
        for en_adverb, de_adverb in toy.ADVERBS:
            if en.startswith(en_adverb[0].upper() + en_adverb[1:] + " "):
                width = len(de_adverb.split())
                assert de.lower().split()[:width] == de_adverb.lower().split(), (en, de)
                assert de.split()[width] in verbs, f"no verb in second position: {de}"
                checked += 1
    assert checked > 200


def test_subordinate_clauses_put_the_verb_last(pairs):
    verbs = finite_verbs()
    conjunctions = [de for _, de in toy.CONJUNCTIONS] + ["dass"]
    checked = 0
    for _, de in pairs:
        for part in re.split(r", ", de.rstrip(".?")):
            tokens = part.split()
            if tokens[0].lower() in conjunctions:
                assert tokens[-1] in verbs, f"clause not verb-final: {part!r} in {de}"
                checked += 1
        fronted = de.split()[0].lower() in [c for _, c in toy.CONJUNCTIONS]
        if fronted:  # "Weil ..., schläft der Mann." - the main clause starts with its verb
            assert de.split(", ")[1].split()[0] in verbs, de
    assert checked > 500


def test_questions_start_with_the_verb(pairs):
    verbs = finite_verbs()
    questions = [(en, de) for en, de in pairs if de.endswith("?")]
    assert len(questions) > 200
    for en, de in questions:
        assert en.split()[0] in ("Do", "Does")
        assert en.endswith("?")
        assert de.split()[0].lower() in verbs, de


def test_masculine_objects_take_the_accusative(pairs):
    masculine = {n.en: n.de for n in toy.NOUNS if n.gender == "m"}
    objects = {"m": "den", "f": "die", "n": "das"}
    gender = {n.en: n.gender for n in toy.NOUNS}
    pattern = re.compile(r"^The (\w+) (\w+) the (\w+)\.$")
    checked = 0
    for en, de in pairs:
        m = pattern.match(en)
        if m and m.group(3) in gender:
            assert de.split()[3] == objects[gender[m.group(3)]], (en, de)
            checked += m.group(3) in masculine
    assert checked > 5


def test_the_questions_variant_is_the_questions_of_the_full_corpus():
    """The variant only skips sentences: its pairs are the full stream's questions, in order."""
    questions = toy.generate(40, seed=5, variant="questions")
    full = toy.generate(1000, seed=5)
    assert questions == [(en, de) for en, de in full if en.endswith("?")][:40]
    verbs = finite_verbs()
    for en, de in questions:
        assert en.split()[0] in ("Do", "Does")
        assert de.endswith("?")
        assert de.split()[0].lower() in verbs, de


def test_the_variant_flag_writes_only_questions(tmp_path):
    toy.main([str(tmp_path), "--variant", "questions", "--sizes", "30", "5", "5", "--seed", "3"])
    for name, size in (("train", 30), ("valid", 5), ("test", 5)):
        lines = (tmp_path / f"{name}.de").read_text("utf-8").splitlines()
        assert len(lines) == size
        assert all(line.endswith("?") for line in lines)
