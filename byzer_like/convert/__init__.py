"""Models in other forms made into plain Hugging Face directories, and quantized exports of them.

    gguf.py        a GGUF file (llama.cpp's format) -> a safetensors Hugging Face directory
    deepspeed.py   a DeepSpeed ZeRO checkpoint (stages 0-3) -> a Hugging Face directory, through
                   DeepSpeed's own ZeRO-to-fp32 consolidation
    quantize.py    a Hugging Face directory -> a weight-quantized one (bitsandbytes 8-bit / NF4 / FP4,
                   torchao int8, GPTQ where its library runs), saved with `save_pretrained`
    staging.py     every conversion writes into a staging folder beside its target and renames it into
                   place only when it succeeded, so nothing half-written is ever registered

This is the work layer: the functions take and return paths and plain values; registering the result
in the catalog is the runtime's job (`Runtime.convert`, `Runtime.quantize`). torch, transformers,
deepspeed, gguf and the quantization libraries are imported inside the functions.
"""
