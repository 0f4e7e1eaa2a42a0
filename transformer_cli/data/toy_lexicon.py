"""The toy grammar's words: nouns, verbs, adjectives, names, pronouns, adverbs,
conjunctions and determiners, each with its English and German forms (toy.py)."""

from __future__ import annotations

from dataclasses import dataclass

# Semantic classes keep sentences plausible: P person, A animal, F food, T thing, X text.


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    gender: str  # m | f | n
    de: str
    de_pl: str
    kind: str  # one of PAFTX


@dataclass(frozen=True)
class Verb:
    en: str  # third person singular
    en_base: str  # plural, and after do/does
    de: str  # third person singular
    de_pl: str
    subj: str  # classes allowed as subject
    obj: str  # classes allowed as object; "" = intransitive


def _table(text: str) -> list[list[str]]:
    """Whitespace-separated rows; "_" stands for a space inside an entry."""
    return [[c.replace("_", " ") for c in line.split()] for line in text.strip().splitlines()]


def _pairs(text: str) -> list[tuple[str, str]]:
    """Parse "english=german ..." into (english, german) pairs; "_" stands for a space."""
    return [tuple(item.replace("_", " ").split("=")) for item in text.split()]  # type: ignore[misc]


# Weak nouns (Junge -> den Jungen) and nouns whose English plural equals the singular
# (fish, sheep) are left out on purpose: the first breaks the article-only accusative
# rule, the second makes the English number ambiguous.
# Columns: singular, plural, gender, German singular, German plural, class.
NOUNS: list[Noun] = [
    Noun(*row)
    for row in _table(
        """
    man         men          m Mann             Männer            P
    woman       women        f Frau             Frauen            P
    child       children     n Kind             Kinder            P
    girl        girls        n Mädchen          Mädchen           P
    teacher     teachers     m Lehrer           Lehrer            P
    doctor      doctors      m Arzt             Ärzte             P
    friend      friends      m Freund           Freunde           P
    sister      sisters      f Schwester        Schwestern        P
    brother     brothers     m Bruder           Brüder            P
    mother      mothers      f Mutter           Mütter            P
    father      fathers      m Vater            Väter             P
    baker       bakers       m Bäcker           Bäcker            P
    cook        cooks        m Koch             Köche             P
    king        kings        m König            Könige            P
    queen       queens       f Königin          Königinnen        P
    grandmother grandmothers f Großmutter       Großmütter        P
    nurse       nurses       f Krankenschwester Krankenschwestern P
    dog         dogs         m Hund             Hunde             A
    cat         cats         f Katze            Katzen            A
    horse       horses       n Pferd            Pferde            A
    bird        birds        m Vogel            Vögel             A
    mouse       mice         f Maus             Mäuse             A
    cow         cows         f Kuh              Kühe              A
    pig         pigs         n Schwein          Schweine          A
    fox         foxes        m Fuchs            Füchse            A
    rabbit      rabbits      n Kaninchen        Kaninchen         A
    duck        ducks        f Ente             Enten             A
    wolf        wolves       m Wolf             Wölfe             A
    goat        goats        f Ziege            Ziegen            A
    chicken     chickens     n Huhn             Hühner            A
    apple       apples       m Apfel            Äpfel             F
    bread       breads       n Brot             Brote             F
    cake        cakes        m Kuchen           Kuchen            F
    soup        soups        f Suppe            Suppen            F
    banana      bananas      f Banane           Bananen           F
    egg         eggs         n Ei               Eier              F
    pear        pears        f Birne            Birnen            F
    carrot      carrots      f Karotte          Karotten          F
    cookie      cookies      m Keks             Kekse             F
    tomato      tomatoes     f Tomate           Tomaten           F
    orange      oranges      f Orange           Orangen           F
    sausage     sausages     f Wurst            Würste            F
    book        books        n Buch             Bücher            X
    letter      letters      m Brief            Briefe            X
    newspaper   newspapers   f Zeitung          Zeitungen         X
    story       stories      f Geschichte       Geschichten       X
    map         maps         f Karte            Karten            X
    poem        poems        n Gedicht          Gedichte          X
    car         cars         n Auto             Autos             T
    house       houses       n Haus             Häuser            T
    ball        balls        m Ball             Bälle             T
    table       tables       m Tisch            Tische            T
    chair       chairs       m Stuhl            Stühle            T
    lamp        lamps        f Lampe            Lampen            T
    bag         bags         f Tasche           Taschen           T
    cup         cups         f Tasse            Tassen            T
    key         keys         m Schlüssel        Schlüssel         T
    bicycle     bicycles     n Fahrrad          Fahrräder         T
    picture     pictures     n Bild             Bilder            T
    flower      flowers      f Blume            Blumen            T
    hat         hats         m Hut              Hüte              T
    window      windows      n Fenster          Fenster           T
    door        doors        f Tür              Türen             T
    bottle      bottles      f Flasche          Flaschen          T
    clock       clocks       f Uhr              Uhren             T
    boat        boats        n Boot             Boote             T
    tree        trees        m Baum             Bäume             T
    umbrella    umbrellas    m Regenschirm      Regenschirme      T
    box         boxes        f Kiste            Kisten            T
"""
    )
]

# english=German:classes. Stems whose declension is irregular (teuer -> teure,
# hoch -> hohe) are avoided so that endings are purely regular.
ADJECTIVES: list[tuple[str, str, str]] = [
    (en, *de.split(":"))  # type: ignore[misc]
    for en, de in _pairs(
        """
    big=groß:PAFTX small=klein:PAFTX old=alt:PAFTX young=jung:PA new=neu:TX red=rot:FT
    green=grün:FT blue=blau:T black=schwarz:AT white=weiß:AT beautiful=schön:PATX
    hungry=hungrig:PA tired=müde:PA friendly=freundlich:PA clever=klug:PA sad=traurig:PA
    fresh=frisch:F sweet=süß:F warm=warm:F cold=kalt:F heavy=schwer:T cheap=billig:FTX
    funny=lustig:PAX long=lang:X
"""
    )
]

# 3rd person singular and plural/base forms, subject classes, object classes (- = none)
_VERBS = [
    Verb(en, en_base, de, de_pl, subj, "" if obj == "-" else obj)
    for en, en_base, de, de_pl, subj, obj in _table(
        """
    sees      see      sieht    sehen     PA PAFTX
    finds     find     findet   finden    PA AFTX
    buys      buy      kauft    kaufen    P  AFTX
    eats      eat      isst     essen     PA F
    reads     read     liest    lesen     P  X
    writes    write    schreibt schreiben P  X
    likes     like     mag      mögen     PA PAFTX
    has       have     hat      haben     PA AFTX
    carries   carry    trägt    tragen    PA AFTX
    paints    paint    malt     malen     P  PAFT
    visits    visit    besucht  besuchen  P  P
    needs     need     braucht  brauchen  PA FTX
    holds     hold     hält     halten    P  AFTX
    looks_for look_for sucht    suchen    PA PAFTX
    feeds     feed     füttert  füttern   P  A
    washes    wash     wäscht   waschen   P  PAT
    loves     love     liebt    lieben    PA PA
    hears     hear     hört     hören     PA PA
    draws     draw     zeichnet zeichnen  P  PAFT
    catches   catch    fängt    fangen    PA AT
    sleeps    sleep    schläft  schlafen  PA -
    laughs    laugh    lacht    lachen    P  -
    runs      run      läuft    laufen    PA -
    sings     sing     singt    singen    PA -
    waits     wait     wartet   warten    PA -
    swims     swim     schwimmt schwimmen PA -
    works     work     arbeitet arbeiten  P  -
    plays     play     spielt   spielen   PA -
    dances    dance    tanzt    tanzen    P  -
    cries     cry      weint    weinen    P  -
"""
    )
]
TRANSITIVE = [v for v in _VERBS if v.obj]
INTRANSITIVE = [v for v in _VERBS if not v.obj]
# Verbs that take a that-clause ("says that ..." -> "sagt, dass ...").
SAYING = [
    Verb(en, en_base, de, de_pl, "P", "")
    for en, en_base, de, de_pl in _table(
        """
    says     say     sagt   sagen
    thinks   think   denkt  denken
    knows    know    weiß   wissen
    believes believe glaubt glauben
    hopes    hope    hofft  hoffen
"""
    )
]

NAMES = ["Anna", "Peter", "Maria", "Thomas", "Lisa", "Paul", "Julia", "Jonas", "Laura", "Felix"]
# (English subject, English object, German nominative, German accusative, plural?)
PRONOUNS = [
    ("he", "him", "er", "ihn", False),
    ("she", "her", "sie", "sie", False),
    ("they", "them", "sie", "sie", True),
    ("we", "us", "wir", "uns", True),
]
ADVERBS = _pairs(
    "today=heute now=jetzt often=oft tomorrow=morgen sometimes=manchmal in_the_morning=am_Morgen "
    "in_the_evening=am_Abend every_day=jeden_Tag on_Sunday=am_Sonntag later=später"
)
CONJUNCTIONS = _pairs("because=weil although=obwohl when=wenn while=während if=falls before=bevor")

# German determiners: (nominative m, f, n, plural), with the masculine accusative apart.
# "ein" has no plural: an English bare plural ("dogs") has no German article either.
DETERMINERS = {
    "the": (("der", "die", "das", "die"), "den", "weak"),
    "this": (("dieser", "diese", "dieses", "diese"), "diesen", "weak"),
    "a": (("ein", "eine", "ein", None), "einen", "mixed"),
    "my": (("mein", "meine", "mein", "meine"), "meinen", "mixed"),
    "": ((None, None, None, None), None, "strong"),
}
_SLOT = {"m": 0, "f": 1, "n": 2}
