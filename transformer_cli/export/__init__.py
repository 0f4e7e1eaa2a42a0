"""Models out of tfx: CTranslate2 and Hugging Face transformers exports."""
