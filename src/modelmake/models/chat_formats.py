"""Chat formats modelmake knows by name: Phi-3's special tokens and templates (the tiny fixture's
tokenizer and the Olive lab's text template). A model's own tokens are read from the model (its
tokenizer files or GGUF metadata: models.sources); these are the ones the tiny fixture is made with."""

# Phi-3's chat special tokens; <|end|> ends a turn, <|endoftext|> ends a document.
PHI3_SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
PHI3_STOP_TOKENS = ["<|end|>", "<|endoftext|>"]
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
