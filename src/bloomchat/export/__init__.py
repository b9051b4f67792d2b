"""Export a bloomchat-saved model to where users deploy it: GGUF for llama.cpp, plus an Ollama
Modelfile beside it (`bloomchat export gguf MODEL -o model.gguf`).

vLLM, TGI and transformers 4.x/5.x read the saved Hugging Face folder itself; see
`bloomchat.models.save_pretrained` for what makes that folder portable.
"""

from bloomchat.export.modelfile import modelfile_text
from bloomchat.export.to_gguf import OUTTYPES, export_gguf
from bloomchat.export.vocab import gguf_vocab, pre_tokenizer_type

__all__ = ["OUTTYPES", "export_gguf", "gguf_vocab", "modelfile_text", "pre_tokenizer_type"]
