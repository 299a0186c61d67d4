"""Input pipeline: sources, decoding, transforms, tokens, grain batching."""
