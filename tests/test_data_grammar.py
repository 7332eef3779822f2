"""Caption grammars: generated captions for fixed content against hand-written expectations.

Each case names the rule it checks. Objects used (genders: de / fr / cs):
  A large red circle, left        Kreis m / cercle m / kruh m (inanimate)
  B small blue star, top          Stern m / étoile f / hvězda f
  C small white heart, right      Herz n / cœur m / srdce n
  D large green ellipse, middle   Ellipse f / ellipse f / elipsa f
  E small black square, bottom    Quadrat n / carré m / čtverec m
"""
import random

import pytest
from hypothesis import given, settings, strategies as st

from dasd_lib.data import languages as L
from dasd_lib.data.languages import EnItem, EnParse, Flaw, chinese, czech, french, german, japanese
from dasd_lib.data.world import COLOURS, POSITIONS, SHAPES, SIZES, Obj

A = Obj("circle", "red", "large", "left")
B = Obj("star", "blue", "small", "top")
C = Obj("heart", "white", "small", "right")
D = Obj("ellipse", "green", "large", "middle")
E = Obj("square", "black", "small", "bottom")

NATIVE_CASES = [
    # ---- German
    ("de: accusative masculine after 'es gibt' (einen + -en), verb second after fronted adverb",
     "de", "de:fronted", [A], "Links gibt es einen großen roten Kreis."),
    ("de: accusative feminine equals nominative (eine + -e); 'in der Mitte' fronted",
     "de", "de:fronted", [D], "In der Mitte gibt es eine große grüne Ellipse."),
    ("de: accusative neuter after 'ein' keeps -es; masculine second conjunct stays accusative",
     "de", "de:fronted", [C, B], "Rechts gibt es ein kleines weißes Herz und oben einen kleinen blauen Stern."),
    ("de: nominative after 'ein' (mixed declension): -er masculine, -es neuter",
     "de", "de:befindet", [A, C], "Ein großer roter Kreis befindet sich links und ein kleines weißes Herz rechts."),
    ("de: weak declension after definite articles der/die/das (-e)",
     "de", "de:definite", [A, D, C],
     "Der große rote Kreis ist links, die große grüne Ellipse in der Mitte und das kleine weiße Herz rechts."),
    ("de: plural verb and noun after a numeral ('sind zwei Formen')",
     "de", "de:count", [A, B],
     "Zu sehen sind zwei Formen: links ein großer roter Kreis und oben ein kleiner blauer Stern."),
    ("de: singular verb and noun for one object ('ist eine Form')",
     "de", "de:count", [D], "Zu sehen ist eine Form: in der Mitte eine große grüne Ellipse."),
    # ---- French
    ("fr: size adjective before the noun, colour adjective after it",
     "fr", "fr:on-voit", [A], "On voit à gauche un grand cercle rouge."),
    ("fr: feminine agreement of article and both adjectives (une petite étoile bleue)",
     "fr", "fr:se-trouve", [B], "En haut se trouve une petite étoile bleue."),
    ("fr: irregular feminine vert -> verte, masculine blanc stays; inversion after fronted place",
     "fr", "fr:se-trouve", [D, C],
     "Au milieu se trouve une grande ellipse verte et à droite un petit cœur blanc."),
    ("fr: participle agrees with the subject (situé / située) after definite le/la",
     "fr", "fr:situe", [A, B],
     "Le grand cercle rouge est situé à gauche et la petite étoile bleue est située en haut."),
    ("fr: plural 'formes' after a numeral, space before the colon",
     "fr", "fr:count", [A, B, C],
     "Il y a trois formes : à gauche un grand cercle rouge, en haut une petite étoile bleue "
     "et à droite un petit cœur blanc."),
    ("fr: singular 'une forme' for one object; feminine noire",
     "fr", "fr:count", [Obj("ellipse", "black", "small", "left")],
     "Il y a une forme : à gauche une petite ellipse noire."),
    # ---- Czech
    ("cs: nominative agreement by gender: -ý masculine, -á feminine, -é neuter",
     "cs", "cs:fronted", [A, B, C], "Vlevo je velký červený kruh, nahoře malá modrá hvězda a vpravo malé bílé srdce."),
    ("cs: accusative: feminine -ou/-u (malou modrou hvězdu), masculine inanimate = nominative",
     "cs", "cs:zachycuje", [A, B], "Obrázek zachycuje vlevo velký červený kruh a nahoře malou modrou hvězdu."),
    ("cs: accusative neuter = nominative (velké zelené ... srdce) and feminine elipsu",
     "cs", "cs:zachycuje", [C, D], "Obrázek zachycuje vpravo malé bílé srdce a uprostřed velkou zelenou elipsu."),
    ("cs: numerals 2-4 take nominative plural 'tvary' and the plural verb 'jsou'",
     "cs", "cs:count", [A, B], "Na obrázku jsou dva tvary: vlevo velký červený kruh a nahoře malá modrá hvězda."),
    ("cs: numeral 5 takes genitive plural 'tvarů' and the singular verb 'je'",
     "cs", "cs:count", [A, B, C, D, E],
     "Na obrázku je pět tvarů: vlevo velký červený kruh, nahoře malá modrá hvězda, vpravo malé bílé srdce, "
     "uprostřed velká zelená elipsa a dole malý černý čtverec."),
    ("cs: 'jeden tvar' (nominative singular) for one object",
     "cs", "cs:count", [D], "Na obrázku je jeden tvar: uprostřed velká zelená elipsa."),
    ("cs: reflexive 'se nachází' with nominative neuter subject",
     "cs", "cs:nachazi", [C], "Malé bílé srdce se nachází vpravo."),
    # ---- Japanese
    ("ja: place + に, subject + が, clauses joined with あり, ended with あります",
     "ja", "ja:ni-ga", [A, B], "左に大きな赤い丸があり、上に小さな青い星があります。"),
    ("ja: topic は per object with one shared verb at the end",
     "ja", "ja:wa", [A, B], "大きな赤い丸は左に、小さな青い星は上にあります。"),
    ("ja: counter つ after the counted noun (図形が三つ); plain adjectives 大きい/小さい",
     "ja", "ja:count", [A, B, C], "図形が三つあります：左に大きい赤い丸、上に小さい青い星、右に小さい白いハート。"),
    ("ja: 緑 is a noun and takes の; position linked to the noun with の; と lists",
     "ja", "ja:no", [D, A], "真ん中の大きな緑の楕円と、左の大きな赤い丸が描かれています。"),
    # ---- Chinese
    ("zh: measure word 个 for 圆形, 颗 for 星星; place word + 有",
     "zh", "zh:you", [A, B], "左边有一个红色的大圆形，上面有一颗蓝色的小星星。"),
    ("zh: 两 (not 二) before a measure word; 颗 for 爱心",
     "zh", "zh:count", [A, C], "图中有两个图形：左边是一个红色的大圆形，右边是一颗白色的小爱心。"),
    ("zh: bare noun phrase + 在 + place word; colour-的 before size-noun",
     "zh", "zh:zai", [D], "绿色的大椭圆在中间。"),
    ("zh: telegraphic list with full-width punctuation",
     "zh", "zh:list", [E, B], "下面：黑色的小正方形；上面：蓝色的小星星。"),
]


@pytest.mark.parametrize("rule,lang,style,objs,expected", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_native_caption(rule, lang, style, objs, expected):
    assert L.native_caption(objs, lang, style) == expected, rule


ENGLISH_CASES = [
    ("en: 'there is' + serial list joined by 'and'; size word kept as written",
     EnParse("there", (EnItem("large", "red", "circle", "left"), EnItem("little", "blue", "star", "top"))),
     "There is a large red circle on the left and a little blue star at the top."),
    ("en: count frame with singular 'shape' for one object",
     EnParse("count", (EnItem("big", "green", "ellipse", "middle"),)),
     "One shape: a big green ellipse in the middle."),
    ("en: web captions name the background",
     EnParse("with", (EnItem("small", "black", "square", "bottom"), EnItem("large", "red", "circle", "left")),
             "dotted"),
     "A picture with a small black square at the bottom and a large red circle on the left, on a dotted background."),
]


@pytest.mark.parametrize("rule,parse,expected", ENGLISH_CASES, ids=[c[0] for c in ENGLISH_CASES])
def test_english_caption(rule, parse, expected):
    assert L.render_english(parse) == expected, rule
    assert L.parse_english(expected) == parse, "the translator must read it back"


MT_CASES = [
    ("de-mt: dative after 'mit', incl. the dative noun 'Herzen' and 'einer' feminine",
     "de", "A picture with a small white heart on the right and a large green ellipse in the middle.",
     "Ein Bild mit einem kleinen weißen Herzen rechts und einer großen grünen Ellipse in der Mitte."),
    ("de-mt: accusative after literal 'wir sehen'; English order noun phrase then place",
     "de", "We see a large red circle on the left.", "Wir sehen einen großen roten Kreis links."),
    ("fr-mt: literal 'il y a' + noun phrase then place, agreement kept",
     "fr", "There is a large red circle on the left and a small blue star at the top.",
     "Il y a un grand cercle rouge à gauche et une petite étoile bleue en haut."),
    ("cs-mt: instrumental after 's' for 'with' (s velkým červeným kruhem, malou modrou hvězdou)",
     "cs", "A picture with a large red circle on the left and a small blue star at the top.",
     "Obrázek s velkým červeným kruhem vlevo a malou modrou hvězdou nahoře."),
    ("cs-mt: literal 'there is' -> 'je tam' with nominative",
     "cs", "There is a small white heart on the right.", "Je tam malé bílé srdce vpravo."),
    ("ja-mt: literal 'a' -> 一つの, noun phrase before place, 'and' -> そして; big -> 大きな",
     "ja", "A big red circle on the left and a small blue star at the top.",
     "一つの大きな赤い丸が左に、そして一つの小さい青い星が上に。"),
    ("ja-mt: object particle を after literal 'we see' (verb first, SVO)",
     "ja", "We see a large red circle on the left.", "私たちは見ます、一つの大きい赤い丸を左に。"),
    ("zh-mt: literal size-的-colour-的 order and 在 after the noun; 和 between clauses",
     "zh", "A large red circle on the left and a small blue star at the top.",
     "一个大的红色的圆形在左边和一颗小的蓝色的星星在上面。"),
    ("zh-mt: count frame keeps 两 before 个",
     "zh", "Two shapes: a large red circle on the left and a small white heart on the right.",
     "两个图形：一个大的红色的圆形在左边和一颗小的白色的爱心在右边。"),
]


@pytest.mark.parametrize("rule,lang,english,expected", MT_CASES, ids=[c[0] for c in MT_CASES])
def test_mt_clean(rule, lang, english, expected):
    text, style, flaws = L.translate(english, lang)
    assert text == expected, rule
    assert style == "mt:" + L.parse_english(english).frame and flaws == []


FLAW_CASES = [
    ("de-flaw: wrong agreement (masculine nominative endings in an accusative slot)",
     "de", "There is a large red circle on the left.", [Flaw("agreement", "np", 0, 0)],
     "Es gibt ein großer roter Kreis links."),
    ("de-flaw: dropped 'es' of 'es gibt'", "de", "There is a large red circle on the left.",
     [Flaw("drop", "es")], "Gibt einen großen roten Kreis links."),
    ("fr-flaw: literal English adjective order", "fr", "A large red circle on the left.",
     [Flaw("order", "colour-first", 0)], "Un grand rouge cercle à gauche."),
    ("fr-flaw: untranslated 'and'", "fr", "A large red circle on the left and a small blue star at the top.",
     [Flaw("untranslated", "conj")], "Un grand cercle rouge à gauche and une petite étoile bleue en haut."),
    ("cs-flaw: dropped preposition 's' (bare instrumental)", "cs", "A picture with a large red circle on the left.",
     [Flaw("drop", "s")], "Obrázek velkým červeným kruhem vlevo."),
    ("ja-flaw: wrong counter (animal counter 匹)", "ja", "A large red circle on the left.",
     [Flaw("agreement", "counter", 0, 0)], "一匹の大きい赤い丸が左に。"),
    ("zh-flaw: 二 instead of 两 before a measure word", "zh",
     "Two shapes: a large red circle on the left and a small white heart on the right.",
     [Flaw("agreement", "liang")], "二个图形：一个大的红色的圆形在左边和一颗小的白色的爱心在右边。"),
    ("zh-flaw: odd literal word choice for the place ('at the top' -> 顶部)", "zh",
     "A small blue star at the top.", [Flaw("word_choice", "pos", 0)], "一颗小的蓝色的星星在顶部。"),
]


@pytest.mark.parametrize("rule,lang,english,flaws,expected", FLAW_CASES, ids=[c[0] for c in FLAW_CASES])
def test_mt_flaws(rule, lang, english, flaws, expected):
    assert L.GRAMMARS[lang].mt(L.parse_english(english), flaws) == expected, rule


def test_french_elision_before_vowel():
    """fr: definite article elides before a vowel (l'étoile), not before a consonant."""
    assert french._fr_article(True, "f", "étoile bleue") == "l'"
    assert french._fr_article(True, "f", "petite étoile") == "la "
    assert french._fr_article(True, "m", "grand cercle") == "le "


def test_every_language_has_three_native_styles_the_translator_never_uses():
    for lang, styles in L.NATIVE_STYLES.items():
        assert len(styles) >= 3, lang
        assert not set(styles) & set(L.MT_STYLES)


# ---------------------------------------------------------------- properties (hypothesis)
objects = st.integers(1, 5).flatmap(lambda k: st.tuples(
    st.permutations(SHAPES), st.permutations(COLOURS), st.permutations(POSITIONS),
    st.lists(st.sampled_from(SIZES), min_size=k, max_size=k)).map(
        lambda t: [Obj(s, c, z, p) for s, c, p, z in zip(t[0][:k], t[1][:k], t[2][:k], t[3])]))

# stems that must survive any flaw: the content stays translatable
_STEMS = {
    "de": lambda o: [german.DE_NOUNS[o.shape][1], german.DE_ADJ[o.colour], german.DE_ADJ[o.size]],
    "fr": lambda o: [french.FR_NOUNS[o.shape][1], french.FR_COLOUR[o.colour][0][:4], french.FR_SIZE[o.size][0]],
    "cs": lambda o: [czech.CS_NOUNS[o.shape][1][:4], czech.CS_ADJ[o.colour], czech.CS_ADJ[o.size]],
    "ja": lambda o: [japanese.JA_SHAPE[o.shape], japanese.JA_COLOUR[o.colour][:-1], japanese.JA_SIZE_I[o.size][:2]],
    "zh": lambda o: [chinese.ZH_SHAPE[o.shape][0], chinese.ZH_COLOUR[o.colour], chinese.ZH_SIZE[o.size]],
}
_POS = {"de": (german.DE_POS, german.DE_POS_ODD), "fr": (french.FR_POS, french.FR_POS_ODD), "cs": (czech.CS_POS, czech.CS_POS_ODD),
        "ja": (japanese.JA_POS, japanese.JA_POS_ODD), "zh": (chinese.ZH_POS, chinese.ZH_POS_ODD)}


@settings(max_examples=60, deadline=None)
@given(objs=objects, frame=st.sampled_from(L.EN_FRAMES), seed=st.integers(0, 10**6),
       bg=st.sampled_from([None, "striped", "checkered", "dotted"]))
def test_translator_keeps_content_and_native_differs(objs, frame, seed, bg):
    rng = random.Random(seed)
    en = L.english_caption(objs, "en:" + frame, rng, bg)
    parse = L.parse_english(en)
    assert [(L.EN_SIZE_OF[i.size_word], i.colour, i.shape, i.pos) for i in parse.items] == \
        [(o.size, o.colour, o.shape, o.pos) for o in objs]
    assert parse.frame == frame and parse.background == bg
    for lang in L.TARGET_LANGS:
        clean, _, _ = L.translate(en, lang)
        noisy, _, flaws = L.translate(en, lang, rng, 1.0)
        assert flaws and noisy != clean, f"{lang}: noise 1.0 must change the caption"
        for o in objs:
            for stem in _STEMS[lang](o):
                assert stem.lower() in noisy.lower(), (lang, stem, noisy)
            assert any(p[o.pos].lower() in noisy.lower() for p in _POS[lang]), (lang, o.pos, noisy)
        natives = {L.native_caption(objs, lang, s) for s in L.NATIVE_STYLES[lang]}
        assert clean not in natives and noisy not in natives
