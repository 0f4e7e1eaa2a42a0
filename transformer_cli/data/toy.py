"""A deterministic English -> German-like toy corpus from a small grammar.

The grammar is small enough to learn in minutes on a CPU but has the structure that
makes translation need attention rather than word-by-word copying:

- gender, number and case agreement of articles and adjectives
  (der/die/das, ein/eine, einen; "ein kleines Kind", "den alten Hund", "gute Hunde");
- plurals (Hund -> Hunde, Maus -> Mäuse) and verb agreement (sieht / sehen);
- verb-second order after a fronted adverb or clause ("Heute sieht der Mann den Hund.");
- verb-final subordinate clauses ("..., weil die Frau ein Buch liest.");
- verb-first yes/no questions ("Sieht der Mann den Hund?");
- accusative marking of masculine objects (den, einen, meinen, diesen, ihn).

Regenerate the shipped corpus with `python -m transformer_cli.data.toy data/toy`; the same
seed gives byte-identical files. `--variant questions` writes a shifted corpus of the same
grammar instead (see VARIANTS), for fine-tuning a model of the full one
(docs/fine-tuning.md).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from transformer_cli.data.toy_lexicon import (
    _SLOT,
    ADJECTIVES,
    ADVERBS,
    CONJUNCTIONS,
    DETERMINERS,
    INTRANSITIVE,
    NAMES,
    NOUNS,
    PRONOUNS,
    SAYING,
    TRANSITIVE,
    Verb,
)

# Which of the grammar's sentences a corpus keeps. all: every construction (the toy
# corpus). questions: only the yes/no questions ("Sieht der Mann den Hund?"): the same
# words in another mix of constructions, a shift a model of the full corpus half knows.
Variant = Literal["all", "questions"]
VARIANTS: tuple[str, ...] = get_args(Variant)


def adjective_ending(declension: str, gender: str, plural: bool, accusative: bool) -> str:
    """The adjective ending after a determiner of the given declension class."""
    if plural:
        return "e" if declension == "strong" else "en"
    if gender == "m" and accusative:
        return "en"
    if declension == "mixed":  # ein/mein: the adjective carries the gender
        return {"m": "er", "f": "e", "n": "es"}[gender]
    return "e"


def decline(stem: str, ending: str) -> str:
    # müde + en -> müden, not müdeen
    return stem + (ending[1:] if stem.endswith("e") and ending.startswith("e") else ending)


@dataclass(frozen=True)
class NounPhrase:
    en_nom: str
    en_acc: str
    de_nom: str
    de_acc: str
    plural: bool
    pronoun: bool = False


def noun_phrase(rng: random.Random, kinds: str) -> NounPhrase:
    roll = rng.random()
    if "P" in kinds and roll < 0.10:
        en, en_acc, de, de_acc, plural = rng.choice(PRONOUNS)
        return NounPhrase(en, en_acc, de, de_acc, plural, pronoun=True)
    if "P" in kinds and roll < 0.22:
        name = rng.choice(NAMES)
        return NounPhrase(name, name, name, name, False)
    noun = rng.choice([n for n in NOUNS if n.kind in kinds])
    plural = rng.random() < 0.3
    det = rng.choice(["the", "the", "my", "this", "" if plural else "a"])
    adjs = [a for a in ADJECTIVES if noun.kind in a[2]]
    adj = rng.choice(adjs) if rng.random() < 0.4 else None

    en_noun = noun.en_pl if plural else noun.en
    en_words = [en_noun] if adj is None else [adj[0], en_noun]
    en_det = {"this": "these"}.get(det, det) if plural else det
    if en_det == "a" and en_words[0][0] in "aeiou":
        en_det = "an"
    en = " ".join(([en_det] if en_det else []) + en_words)

    forms, masc_acc, declension = DETERMINERS[det]
    slot = 3 if plural else _SLOT[noun.gender]
    de_noun = noun.de_pl if plural else noun.de

    def german(accusative: bool) -> str:
        article = masc_acc if accusative and noun.gender == "m" and not plural else forms[slot]
        words = [article] if article else []
        if adj is not None:
            ending = adjective_ending(declension, noun.gender, plural, accusative)
            words.append(decline(adj[1], ending))
        return " ".join([*words, de_noun])

    return NounPhrase(en, en, german(False), german(True), plural)


@dataclass(frozen=True)
class Clause:
    subj: NounPhrase
    verb: Verb
    obj: NounPhrase | None
    adverb: tuple[str, str] | None

    def en_statement(self, adverb_first: bool = False) -> str:
        verb = self.verb.en_base if self.subj.plural else self.verb.en
        words = [self.subj.en_nom, verb] + ([self.obj.en_acc] if self.obj else [])
        if self.adverb and adverb_first:
            return " ".join([self.adverb[0], *words])
        return " ".join(words + ([self.adverb[0]] if self.adverb else []))

    def en_question(self) -> str:
        aux = "do" if self.subj.plural else "does"
        words = [aux, self.subj.en_nom, self.verb.en_base] + ([self.obj.en_acc] if self.obj else [])
        return " ".join(words + ([self.adverb[0]] if self.adverb else []))

    def _middle(self, with_subject: bool) -> list[str]:
        """German middle field: subject, then adverb and object (pronoun objects first)."""
        words = [self.subj.de_nom] if with_subject else []
        adverb = [self.adverb[1]] if self.adverb else []
        obj = [self.obj.de_acc] if self.obj else []
        return words + (obj + adverb if self.obj and self.obj.pronoun else adverb + obj)

    def _finite(self) -> str:
        return self.verb.de_pl if self.subj.plural else self.verb.de

    def de_main(self) -> str:  # subject first, verb second
        return " ".join([self.subj.de_nom, self._finite(), *self._middle(False)])

    def de_inverted(self, fronted: str = "") -> str:  # verb second after a fronted part
        head = [fronted] if fronted else []
        return " ".join([*head, self._finite(), *self._middle(True)])

    def de_fronted_adverb(self) -> str:
        assert self.adverb is not None
        rest = Clause(self.subj, self.verb, self.obj, None)
        return rest.de_inverted(self.adverb[1])

    def de_subordinate(self) -> str:  # verb last
        return " ".join([*self._middle(True), self._finite()])


def clause(rng: random.Random, adverb_p: float = 0.25, kinds: str = "PA") -> Clause:
    verb = rng.choice(TRANSITIVE) if rng.random() < 0.7 else rng.choice(INTRANSITIVE)
    subj = noun_phrase(rng, "".join(k for k in verb.subj if k in kinds) or verb.subj)
    obj = noun_phrase(rng, verb.obj) if verb.obj else None
    adverb = rng.choice(ADVERBS) if rng.random() < adverb_p else None
    return Clause(subj, verb, obj, adverb)


def sentence(rng: random.Random) -> tuple[str, str]:
    """One (English, German) pair; the German is a function of the English."""
    roll = rng.random()
    if roll < 0.30:  # "The man sees the dog (today)."
        c = clause(rng)
        en, de, end = c.en_statement(), c.de_main(), "."
    elif roll < 0.45:  # "Today the man sees the dog." -> "Heute sieht der Mann den Hund."
        c = clause(rng, adverb_p=1.0)
        en, de, end = c.en_statement(adverb_first=True), c.de_fronted_adverb(), "."
    elif roll < 0.55:  # "Does the man see the dog?" -> "Sieht der Mann den Hund?"
        c = clause(rng)
        en, de, end = c.en_question(), c.de_inverted(), "?"
    elif roll < 0.75:  # "..., because the woman reads a book" -> "..., weil ... liest"
        main, sub = clause(rng, 0.15), clause(rng, 0.15)
        conj = rng.choice(CONJUNCTIONS)
        en = f"{main.en_statement()} {conj[0]} {sub.en_statement()}"
        de = f"{main.de_main()}, {conj[1]} {sub.de_subordinate()}"
        end = "."
    elif roll < 0.85:  # "Because ..., the man sleeps." -> "Weil ..., schläft der Mann."
        main, sub = clause(rng, 0.15), clause(rng, 0.15)
        conj = rng.choice(CONJUNCTIONS)
        en = f"{conj[0]} {sub.en_statement()}, {main.en_statement()}"
        de = f"{conj[1]} {sub.de_subordinate()}, {main.de_inverted()}"
        end = "."
    elif roll < 0.95:  # "The man says that ..." -> "Der Mann sagt, dass ..."
        verb = rng.choice(SAYING)
        subj = noun_phrase(rng, "P")
        sub = clause(rng, 0.2)
        en_verb = verb.en_base if subj.plural else verb.en
        de_verb = verb.de_pl if subj.plural else verb.de
        en = f"{subj.en_nom} {en_verb} that {sub.en_statement()}"
        de = f"{subj.de_nom} {de_verb}, dass {sub.de_subordinate()}"
        end = "."
    else:  # two main clauses: "... and ..." keeps both verbs second
        a, b = clause(rng, 0.1), clause(rng, 0.1)
        en = f"{a.en_statement()} and {b.en_statement()}"
        de = f"{a.de_main()} und {b.de_main()}"
        end = "."
    return _capitalize(en) + end, _capitalize(de) + end


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def generate(
    n: int, seed: int = 1, min_words: int = 4, max_words: int = 20, variant: Variant = "all"
) -> list[tuple[str, str]]:
    """`n` distinct pairs (distinct English sides) of `variant`, in generation order.

    A variant only skips sentences, so "all" gives the same pairs whatever variants exist.
    """
    rng = random.Random(seed)
    pairs: dict[str, str] = {}  # insertion-ordered, so the output is deterministic
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"the toy grammar cannot produce {n} distinct sentences")
        en, de = sentence(rng)
        if variant == "questions" and not en.endswith("?"):
            continue
        if min_words <= len(en.split()) <= max_words and en not in pairs:
            pairs[en] = de
    return list(pairs.items())


def write_corpus(
    out_dir: str | Path,
    sizes: tuple[int, int, int] = (10_000, 500, 500),
    seed: int = 1,
    variant: Variant = "all",
) -> None:
    """Write {train,valid,test}.{en,de}; splits are disjoint because all pairs are distinct."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = generate(sum(sizes), seed, variant=variant)
    start = 0
    for name, size in zip(("train", "valid", "test"), sizes, strict=True):
        chunk = pairs[start : start + size]
        start += size
        for lang, side in (("en", 0), ("de", 1)):
            text = "".join(p[side] + "\n" for p in chunk)
            # newline="\n" keeps the bytes identical on every platform
            with open(out / f"{name}.{lang}", "w", encoding="utf-8", newline="\n") as f:
                f.write(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m transformer_cli.data.toy", description="Write the toy en->de corpus."
    )
    parser.add_argument("out_dir", help="directory for {train,valid,test}.{en,de}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sizes", type=int, nargs=3, default=(10_000, 500, 500), metavar=("TRAIN", "VALID", "TEST")
    )
    parser.add_argument(
        "--variant", choices=VARIANTS, default="all", help="which sentences (default: all)"
    )
    args = parser.parse_args(argv)
    write_corpus(args.out_dir, tuple(args.sizes), args.seed, args.variant)
    print(f"wrote {sum(args.sizes)} pairs to {args.out_dir}")


if __name__ == "__main__":
    main()
