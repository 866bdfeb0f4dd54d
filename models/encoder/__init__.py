"""Sentence-embedding encoders (BERT-family `AutoModel`s): Byzer-LLM's bge, bge_m3 and m3e model folders.

`plugin` (`pretrainedModelType="encoder"`) takes any encoder whose config.json model_type is one of
byzer_like.plugins.hf.ENCODER_MODEL_TYPES and pools by the mean of its tokens unless the directory's
sentence-transformers files (or `pooling=`) say otherwise. `families` holds Byzer's names, each checked
against config.json and with its own default pooling (registered as `byzer_like_models.encoder:families.<name>`;
`custom/bge` is `bge`, as Byzer's scripts write it).
"""
from types import SimpleNamespace

from byzer_like.plugins.encoder import EncoderPlugin

plugin = EncoderPlugin("encoder")

# Byzer-LLM's name -> (the config.json model_type values of its checkpoints, the pooling it was trained with)
FAMILIES: dict[str, tuple[tuple[str, ...], str]] = {
    "bge": (("bert", "xlm-roberta"), "cls"),  # bge-large-zh / bge-base-en (BERT), bge-m3 (XLM-RoBERTa)
    "bge_m3": (("xlm-roberta",), "cls"),
    "m3e": (("bert", "roberta"), "mean"),  # m3e-base / m3e-large: sentence-transformers, mean pooling
}

families = SimpleNamespace(**{
    name: EncoderPlugin(name, model_types=types, pooling=pooling) for name, (types, pooling) in FAMILIES.items()
})
