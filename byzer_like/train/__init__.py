"""Training: supervised fine-tuning (sft: LoRA, QLoRA, full) and continued pretraining (sfft: Ray Train +
DeepSpeed), shared by every Hugging Face plugin. Heavy libraries are imported inside the functions."""
