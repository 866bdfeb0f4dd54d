"""Sentence-embedding encoders (BERT-family `AutoModel`s): Byzer-LLM's bge, bge_m3 and m3e model folders.

`plugin` (`pretrainedModelType="encoder"`) takes any encoder whose config.json model_type is one of
`byzer_like.plugins.model_types.ENCODER_CONFIG_TYPES` and pools by the mean of its tokens unless the
directory's sentence-transformers files (or `pooling=`) say otherwise. `families` holds Byzer's names, each
checked against config.json and with its own default pooling (`model_types.ENCODER_FAMILIES`; registered as
`byzer_like_models.encoder:families.<name>`; `custom/bge` is `bge`, as Byzer's scripts write it).
"""
from types import SimpleNamespace

from byzer_like.backends.encoder import EncoderPlugin
from byzer_like.plugins.model_types import ENCODER_FAMILIES

plugin = EncoderPlugin("encoder")

families = SimpleNamespace(**{
    name: EncoderPlugin(name, model_types=types, pooling=pooling)
    for name, (types, pooling) in ENCODER_FAMILIES.items() if name != "encoder"
})
