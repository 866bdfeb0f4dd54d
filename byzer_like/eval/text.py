"""How the metrics cut text into tokens, in every script.

    tokens("The cats sat")        -> ["the", "cat", "sat"]      (ROUGE: lower case, Porter stem, as rouge-score)
    tokens("北京是中国的首都")      -> ["北", "京", "是", "中", "国", "的", "首", "都"]
    tokens("Привет, мир")         -> ["привет", "мир"]
    segments("巴黎 in France")     -> ["巴", "黎", "in", "France"]  (token F1 / BLEU: whitespace words, CJK split)

The rule (docs/metrics.md): characters of the scripts written without spaces between words - Han (CJK
ideographs), Hiragana, Katakana, Hangul, Thai, Lao, Khmer, Myanmar - are one token each; every other run
of Unicode word characters is a token. This is the convention of multilingual evaluations: character-level
ROUGE for Chinese (LCSTS, Hu et al. 2015; CLUE), the MLQA evaluation script's "mixed segmentation" for
token F1 (Lewis et al. 2020), sacrebleu's `zh` tokeniser for BLEU (each CJK character a token, then 13a).
rouge-score's own tokeniser keeps only [a-z0-9] and so drops every other character: two identical Chinese
answers would score 0. English tokens are what rouge-score makes of them (lower case, ASCII words of more
than 3 letters Porter-stemmed), so English scores are unchanged.
"""
from __future__ import annotations

import re

# the scripts written without spaces between words: one token per character
CHAR_SCRIPTS = ("\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31ff\u3400-\u4dbf"
                "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f"  # CJK
                "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f")  # Thai, Lao, Khmer, Myanmar
_WORDS = re.compile(f"[{CHAR_SCRIPTS}]|(?:(?![{CHAR_SCRIPTS}])\\w)+")
_SEGMENTS = re.compile(f"[{CHAR_SCRIPTS}]|[^\\s{CHAR_SCRIPTS}]+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")
_STEMMER = None


def tokens(text: str | None) -> list[str]:
    """ROUGE's tokens of `text`: lower-cased; one per character of the scripts in `CHAR_SCRIPTS`, else runs
    of Unicode word characters; ASCII words longer than 3 characters Porter-stemmed (rouge-score's
    `use_stemmer=True`, nltk's PorterStemmer("ORIGINAL_ALGORITHM") as rouge-score uses it)."""
    global _STEMMER
    if _STEMMER is None:
        from nltk.stem import porter

        _STEMMER = porter.PorterStemmer("ORIGINAL_ALGORITHM")
    out = []
    for t in _WORDS.findall((text or "").lower()):
        out.append(_STEMMER.stem(t) if len(t) > 3 and _ASCII_WORD.fullmatch(t) else t)
    return out


def segments(text: str | None) -> list[str]:
    """`text` split at whitespace, with every character of the `CHAR_SCRIPTS` its own piece (punctuation
    stays with its word): token F1's tokens, and what BLEU's 13a tokeniser is given."""
    return _SEGMENTS.findall(text or "")


def spaced(text: str | None) -> str:
    """`segments(text)` joined by single spaces (BLEU's input; unchanged for text in spaced scripts)."""
    return " ".join(segments(text))


class RougeTokenizer:
    """`tokens` as a rouge-score tokenizer (its `Tokenizer` protocol: `tokenize(text) -> list[str]`)."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


__all__ = ["CHAR_SCRIPTS", "RougeTokenizer", "segments", "spaced", "tokens"]
