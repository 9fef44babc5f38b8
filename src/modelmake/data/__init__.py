"""Training data: reading prompt/response records, text and chat templates."""
